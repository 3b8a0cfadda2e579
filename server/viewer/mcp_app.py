"""The viewer on the MCP server: the MCP App (``ui://leads/viewer.html``) that hosts supporting
the Apps extension render next to a tool result, and the ``viewer://`` resources it (and any
client) reads.

- ``ui://leads/viewer.html``: the page without data; given a tool result that names a
  candidate (or a session) it reads the matching ``.../payload`` resource through the host;
- ``viewer://candidate/{candidate_id}/payload``, ``viewer://session/{session_id}/payload``: the
  payload as JSON (:mod:`.payload`);
- ``viewer://candidate/{candidate_id}``, ``viewer://session/{session_id}``: the page with the
  payload inlined, ready to save as a file (the client's ``report.html``).

A candidate's payload shows one beat (the first test sample, the one evaluate_candidate plots):
mesh, pacing site, true and predicted activation times and their absolute error, the true and
predicted potential over the beat, and its session's leaderboard and search trajectory. The
prediction is simulated once in a worker and cached in the candidate's run folder. Reaction
names are shown as the session shows them (aliases when anonymised).

Hook into a server with three calls: ``viewer = ViewerApp(service)``, ``extensions=[
viewer.extension]`` when the server is built, ``meta=viewer.tool_meta(name)`` for each tool,
and ``viewer.register(server)`` for the ``viewer://`` resources.
"""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import numpy as np
from mcp.server.apps import Apps
from mcp.server.mcpserver.exceptions import ResourceError

from leads_engine.metrics import activation_times
from leads_engine.training import reference_activation_times

from ..errors import DiscoveryError
from ..runs import figure_dir
from .payload import candidate_scene, leaderboard, viewer_payload
from .prediction import CACHE_NAME, predicted_beat
from .render import app_html, render_html

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from ..archive import CandidateDetail
    from ..service import DiscoveryService
    from ..state import DiscoverySession

__all__ = ["APP_URI", "LEGACY_URI_KEY", "UI_TOOLS", "ViewerApp"]

APP_URI = "ui://leads/viewer.html"
#: the tools whose result the MCP App shows (they return a candidate or a session)
UI_TOOLS = (
    "start_session",
    "train_candidate",
    "get_candidate",
    "finetune_candidate",
    "evaluate_candidate",
)
#: the flat ``_meta`` key of the first MCP Apps drafts, still read by some hosts
LEGACY_URI_KEY = "ui/resourceUri"
JSON_MIME = "application/json"
HTML_MIME = "text/html"


class ViewerApp:
    """The viewer's MCP App extension and resources over one :class:`DiscoveryService`."""

    def __init__(self, service: DiscoveryService) -> None:
        self.service = service
        self.extension = Apps()
        self.extension.add_html_resource(
            APP_URI,
            app_html(),
            name="leads_viewer",
            title="LEADS 3-D viewer",
            description="interactive 3-D view of a candidate or a session: predicted vs true "
            "activation times, error, the potential over the beat, the leaderboard",
            prefers_border=True,
        )

    @staticmethod
    def tool_meta(tool_name: str) -> dict[str, Any] | None:
        """The ``_meta`` of a tool: the App's resource for :data:`UI_TOOLS` (``ui.resourceUri``,
        and the flat ``ui/resourceUri`` key that early Apps hosts read), else None."""
        if tool_name not in UI_TOOLS:
            return None
        return {"ui": {"resourceUri": APP_URI}, LEGACY_URI_KEY: APP_URI}

    def register(self, server: MCPServer) -> None:
        """Add the ``viewer://`` resources to ``server``."""
        service_error = _resource_error

        @server.resource(
            "viewer://candidate/{candidate_id}/payload",
            name="candidate_viewer_payload",
            description="the 3-D viewer's data for a candidate (mesh, activation maps, potential "
            "over the first test beat, session leaderboard) as JSON",
            mime_type=JSON_MIME,
        )
        async def candidate_payload(candidate_id: str) -> str:
            return json.dumps(await service_error(self.candidate_payload(candidate_id)))

        @server.resource(
            "viewer://candidate/{candidate_id}",
            name="candidate_viewer",
            description="a self-contained interactive 3-D viewer (HTML) of a candidate",
            mime_type=HTML_MIME,
        )
        async def candidate_page(candidate_id: str) -> str:
            return render_html(await service_error(self.candidate_payload(candidate_id)))

        @server.resource(
            "viewer://session/{session_id}/payload",
            name="session_viewer_payload",
            description="the 3-D viewer's data for a session (its best candidate and the "
            "leaderboard) as JSON",
            mime_type=JSON_MIME,
        )
        async def session_payload(session_id: str) -> str:
            return json.dumps(await service_error(self.session_payload(session_id)))

        @server.resource(
            "viewer://session/{session_id}",
            name="session_viewer",
            description="a self-contained interactive 3-D viewer (HTML) of a session",
            mime_type=HTML_MIME,
        )
        async def session_page(session_id: str) -> str:
            return render_html(await service_error(self.session_payload(session_id)))

    # ------------------------------------------------------------------ payloads

    async def candidate_payload(self, candidate_id: str) -> dict[str, Any]:
        """The payload of a candidate and its session (see the module docstring)."""
        candidate = self.service.reads.candidate(candidate_id)
        session = await self.service.sessions.get(candidate.session_id)
        scene = await self._scene(session, candidate)
        info = {
            "candidate": candidate_id,
            "session": session.session_id,
            "data set": session.dataset_shown,
            "reaction": candidate.reaction or "-",
            "diffusion": candidate.diffusion,
            "status": candidate.status,
            "validation loss": candidate.val_loss,
            "parameters": candidate.parameter_count,
            "evaluations": "; ".join(
                f"{e.split}: MSE {_number(e.mse)}, AT MAE {_number(e.at_mae)} ms"
                for e in candidate.evaluations
            )
            or "none yet (evaluate_candidate)",
        }
        return viewer_payload(
            "candidate",
            f"{candidate.reaction or '-'} + {candidate.diffusion} ({candidate_id})",
            [scene],
            session=self._leaderboard(session),
            info=info,
        )

    async def session_payload(self, session_id: str) -> dict[str, Any]:
        """The payload of a session: its best candidate's beat (the data alone before any
        candidate trained) and the leaderboard."""
        session = await self.service.sessions.get(session_id)
        best = self.service.archive.best_candidate(session_id)
        scene = await self._scene(session, best)
        info = {
            "session": session_id,
            "data set": session.dataset_shown,
            "budget used": f"{session.steps_used} of {session.budget}",
            "best candidate": None if best is None else best.candidate_id,
        }
        return viewer_payload(
            "session",
            f"session {session_id}",
            [scene],
            session=self._leaderboard(session),
            info=info,
        )

    def _leaderboard(self, session: DiscoverySession) -> dict[str, Any]:
        rows = []
        for c in self.service.archive.list_candidates(session.session_id):
            spec = c.spec or {}
            rows.append(
                {
                    "candidate_id": c.candidate_id,
                    "operation": c.operation,
                    "reaction": c.reaction,
                    "diffusion": c.diffusion,
                    "hyperparameters": spec.get("diffusion_hyperparameters") or {},
                    "edited": spec.get("diffusion_source") is not None,
                    "parameter_count": c.parameter_count,
                    "val_loss": c.val_loss,
                    "status": c.status,
                }
            )
        return leaderboard(rows)

    async def _scene(
        self, session: DiscoverySession, candidate: CandidateDetail | None
    ) -> dict[str, Any]:
        """The first test beat of the session's data set, with the candidate's prediction when
        it has weights."""
        data = session.dataset
        test = data.indices("test")
        sample = int(test[0]) if len(test) else 0
        u_true = None if data.u is None else np.asarray(data.u[sample], dtype=np.float32)
        # measured activation times when the data set has them, else those of its potential
        at_true = reference_activation_times(data, np.array([sample]))[0][0]
        u_pred = at_pred = None
        candidate_id = None if candidate is None else candidate.candidate_id
        weights = None if candidate_id is None else self.service.reads.stored_weights(candidate_id)
        if candidate is not None and weights is not None:
            u_pred = await predicted_beat(
                self.service.reads.spec_of(candidate, session).model_dump_json(),
                data,
                session.dataset_path,
                weights,
                sample,
                cache=figure_dir(session.session_id, candidate_id) / CACHE_NAME,
                start_method=self.service.pool.start_method,
            )
            at_pred = activation_times(u_pred, data.t)
        name = f"{session.dataset_shown}, test beat {sample}"
        if candidate is not None and weights is None:
            name += f" (candidate {candidate.status}: no prediction)"
        build = partial(
            candidate_scene,
            name,
            data.points,
            data.cells,
            data.t,
            at_true,
            at_pred,
            u_true,
            u_pred,
            pacing_site=int(data.pacing_site[sample]),
        )
        return await anyio.to_thread.run_sync(build)  # quantising a large beat takes a while


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


async def _resource_error(call: Any) -> Any:
    """Await a payload; a refused read becomes a resource error that says what to do."""
    try:
        return await call
    except DiscoveryError as exc:
        raise ResourceError(str(exc)) from exc
