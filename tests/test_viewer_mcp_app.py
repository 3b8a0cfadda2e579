"""The viewer on the MCP server: the App resource and the tools that point to it, the
``viewer://`` payloads of a trained candidate and its session (decoded against the engine's own
rollout), names masked in anonymised sessions, errors for unknown ids, and the client's
``report.html``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from leads_agent.connection import ServerConnection
from leads_agent.report_html import viewer_uri, write_report_html
from leads_server.app import LeadsServer
from leads_server.viewer.mcp_app import APP_URI, LEGACY_URI_KEY, UI_TOOLS
from leads_server.viewer.payload import AT_STEPS, decode_at, decode_potential
from leads_server.viewer.prediction import CACHE_NAME
from leads_server.viewer.render import PAYLOAD_MARKER
from mcp import Client
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from server_calls import REAL_NAMES, call, start, train

from leads_engine.dataset import load_dataset
from leads_engine.metrics import activation_times
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig, evaluate

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio


async def _trained(client: Client, **session: object) -> tuple[str, str]:
    session_id = await start(client, **session)
    catalogs = await call(client, "list_catalogs", session_id=session_id)
    reaction = catalogs["reactions"][0]["name"]
    await call(client, "select_reaction", session_id=session_id, reaction=reaction)
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    result, _ = await train(client, session_id, epochs=1)
    assert result["status"] == "ok"
    return session_id, result["candidate_id"]


async def _payload(client: Client, uri: str) -> dict:
    content = (await client.read_resource(uri)).contents[0]
    assert content.mime_type == "application/json"
    return json.loads(content.text)


async def test_tools_that_return_a_candidate_or_session_point_to_the_app(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    for name, tool in tools.items():
        meta = tool.meta or {}
        assert (meta.get("ui") == {"resourceUri": APP_URI}) == (name in UI_TOOLS), name
        assert (meta.get(LEGACY_URI_KEY) == APP_URI) == (name in UI_TOOLS), name
    assert EXTENSION_ID in (client.server_capabilities.extensions or {})
    app = (await client.read_resource(APP_URI)).contents[0]
    assert app.mime_type == APP_MIME_TYPE
    assert PAYLOAD_MARKER in app.text and "ui/initialize" in app.text
    listed = {str(r.uri): r for r in (await client.list_resources()).resources}
    assert APP_URI in listed


async def test_candidate_payload_is_the_engine_rollout_of_the_first_test_beat(
    client: Client, server: LeadsServer, home: Path
) -> None:
    session_id, candidate_id = await _trained(client)
    payload = await _payload(client, f"viewer://candidate/{candidate_id}/payload")
    assert payload["kind"] == "candidate" and len(payload["scenes"]) == 1
    scene = payload["scenes"][0]
    true, pred, error = scene["panels"]
    dataset = load_dataset(home / "datasets" / "tiny.npz")
    sample = int(dataset.indices("test")[0])
    assert scene["pacing_site"] == int(dataset.pacing_site[sample])
    u_true = decode_potential(true["potential"])
    assert np.max(np.abs(u_true - np.clip(dataset.u[sample], 0, 1))) <= 1 / 510 + 1e-6

    candidate = server.service.reads.candidate(candidate_id)
    weights = server.service.reads.stored_weights(candidate_id)
    state = torch.load(io.BytesIO(weights), weights_only=True)
    spec = CandidateSpec.model_validate(candidate.spec)
    reference = evaluate(spec, dataset, state, "test", TrainingConfig(compile=False))
    u_ref = np.clip(reference.u_pred[0], 0, 1)
    assert np.max(np.abs(decode_potential(pred["potential"]) - u_ref)) <= 1 / 510 + 1e-4
    lo, hi = scene["color_range"]
    at_ref = activation_times(reference.u_pred[0], dataset.t)
    np.testing.assert_allclose(
        decode_at(pred["values"]), at_ref, atol=(hi - lo) / AT_STEPS + 1e-3, equal_nan=True
    )
    assert error["range"][0] == 0.0

    rows = payload["session"]["leaderboard"]
    assert [r["candidate_id"] for r in rows] == [candidate_id]
    assert rows[0]["diffusion"] == "laplacian_global" and rows[0]["status"] == "ok"
    cache = home / "runs" / session_id / candidate_id / CACHE_NAME
    assert cache.exists()
    again = await _payload(client, f"viewer://candidate/{candidate_id}/payload")
    assert again["scenes"] == payload["scenes"]  # the cached rollout gives the same beat


async def test_anonymised_sessions_show_aliases_only(client: Client) -> None:
    session_id, candidate_id = await _trained(client, anonymise=True)
    for uri in (f"viewer://candidate/{candidate_id}", f"viewer://session/{session_id}"):
        page = (await client.read_resource(uri)).contents[0]
        assert page.mime_type == "text/html" and PAYLOAD_MARKER not in page.text
        start_at = page.text.index('id="leads-payload">') + len('id="leads-payload">')
        meta = json.loads(page.text[start_at : page.text.index("</script>", start_at)])
        text = json.dumps([meta["title"], meta["info"], meta["session"]]).lower()
        assert not any(name in text for name in REAL_NAMES), text
    session = await _payload(client, f"viewer://session/{session_id}/payload")
    assert session["kind"] == "session"
    assert session["info"]["best candidate"] == candidate_id


async def test_a_new_session_shows_its_data_and_unknown_ids_are_refused(client: Client) -> None:
    session_id = await start(client)
    payload = await _payload(client, f"viewer://session/{session_id}/payload")
    panels = payload["scenes"][0]["panels"]
    assert [p["role"] for p in panels] == ["true"]
    assert payload["session"]["leaderboard"] == []
    for uri in ("viewer://candidate/c-nope/payload", "viewer://session/s-nope"):
        with pytest.raises(Exception, match="unknown (candidate|session)"):
            await client.read_resource(uri)


async def test_the_client_writes_report_html_from_the_server(
    client: Client, tmp_path: Path
) -> None:
    from leads_agent.agent import RunResult

    session_id, candidate_id = await _trained(client)
    conn = ServerConnection(client)
    result = RunResult.__new__(RunResult)
    result.session_id, result.evaluation, result.best, result.notes = session_id, None, None, []
    assert viewer_uri(result) == f"viewer://session/{session_id}"
    result.evaluation = {"candidate_id": candidate_id}
    path = await write_report_html(conn, result, tmp_path)
    assert path == tmp_path / "report.html" and not result.notes
    page = path.read_text()
    assert candidate_id in page and PAYLOAD_MARKER not in page
    result.evaluation = {"candidate_id": "c-missing"}
    assert await write_report_html(conn, result, tmp_path / "other") is None
    assert "could not be read" in result.notes[0]
