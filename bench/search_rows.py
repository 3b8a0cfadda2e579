"""A search row (LEADS with the offline policy or an LLM, HDTwinGen-style free-form code): the
search runs through the bundled MCP server, one archive per run, in an anonymised session, and
its result is read back through the same server's tools; only the real reaction names come from
the archive's truth files (:mod:`leads_server.archive.truth`), which the bench, as the user's
trusted code, may read and the searching agent never can.

After the search, a fresh server on the run's archive answers: ``query_archive`` (scoped to the
session) gives the final candidate's spec under its alias, which the truth file turns into the
real reaction name so the structure is judged under it, the ``candidate://{id}/weights.pt``
resource its weights, and ``evaluate_candidate`` its test scores (the search's own call of
it, or a new one when the search's was refused). The test figures are exactly those of a
local evaluation of the same weights on the same split: the server's evaluation job runs the
engine's ``evaluate`` with the run's training settings. The weights only serve the figure:
the activation-time map of the first test beat, rolled out here.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from leads_agent.agent import RunConfig, RunResult, run_search
from leads_agent.cli import make_policy
from leads_agent.connection import ServerConnection, connect
from leads_agent.ui import QuietView
from leads_server.anonymise import ReactionAliases
from leads_server.archive.truth import TruthStore

from leads_engine.dataset import EPDataset, load_dataset
from leads_engine.metrics import ActivationError, activation_times
from leads_engine.spec import CandidateSpec
from leads_engine.training import GraphCache, load_model, predict, reference_activation_times

from .config import BenchConfig, Run
from .records import same_reaction, training_config

__all__ = [
    "HDTWINGEN_PROMPT",
    "FinalModel",
    "first_beat_activation_maps",
    "run_search_row",
    "search_setup",
]

HDTWINGEN_PROMPT = """\
You write the complete model of a cardiac electrophysiology digital twin as free-form code: the
diffusion operator du/dt = D(u; mesh) is whatever Python module you write, with the neural
(MLP) reaction fixed. Each step: select_reaction with the neural reaction, then
modify_diffusion with the COMPLETE source of your module (read_template_source shows the
interface your module must keep); it is checked and trained in a sandbox. Improve the code
from the validation losses you observe. Answer with your reasoning and no tool call once the
candidate is set up. The session_id is filled in for you.
"""


class _ForwardingView(QuietView):
    """A quiet run view that forwards the search's steps to the benchmark's progress line."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def session(self, session_id: str, info: dict[str, Any]) -> None:
        self.say(f"session {session_id}")

    def thought(self, step: int, text: str) -> None:
        self.say(f"step {step}: {text.splitlines()[0][:90] if text else ''}")

    def training(self, label: str, total: int) -> None:
        self.say(f"training {label}")

    def message(self, text: str) -> None:
        self.say(text)


def search_setup(
    run: Run, dataset_path: Path, config: BenchConfig, resume: str | None = None
) -> tuple[RunConfig, str | None]:
    """The agent's run configuration for a search row, and its LLM system prompt (``None``:
    the default LEADS prompt). The HDTwinGen-style row fixes the neural reaction and asks for
    free-form model code through ``modify_diffusion``."""
    run_config = RunConfig(
        dataset=str(dataset_path),
        budget=config.budget,
        epochs=config.epochs,
        finetune=config.finetune,
        batch_size=config.batch_size,
        seed=run.seed,
        resume=resume,
        label=f"bench {run.method}",
    )
    if run.method != "hdtwingen":
        return run_config, None
    run_config.fixed_reaction = "neural"
    run_config.reactions = ["neural"]
    return run_config, HDTWINGEN_PROMPT


# ------------------------------------------------------------------------------- the tools


def _literal(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


async def _tool(conn: ServerConnection, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await conn.call(name, arguments)
    if not result.ok:
        raise RuntimeError(f"the server refused {name}: {result.text or result.data}")
    return result.as_dict()


async def _rows(
    conn: ServerConnection, sql: str, session_id: str | None = None
) -> list[dict[str, Any]]:
    """The rows of one ``query_archive`` SELECT (over ``session_id``'s rows, or the
    non-anonymised sessions'), as column -> value dicts."""
    arguments = {"sql": sql} if session_id is None else {"sql": sql, "session_id": session_id}
    answer = await _tool(conn, "query_archive", arguments)
    return [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]


async def session_to_resume(conn: ServerConnection, archive_path: Path) -> str | None:
    """The latest search session in the run's own archive (one per run), if an earlier attempt
    left one: anonymised sessions are listed by their truth files, the others by a query. It is
    resumed even when its budget is spent (status ``finished``): a run interrupted between its
    last step and the fine-tuning still has those to do, and a run whose result file was
    written is skipped before its archive is opened."""
    latest = "SELECT session_id, created_at FROM sessions ORDER BY created_at DESC LIMIT 1"
    found = await _rows(conn, latest)
    for session_id in TruthStore(archive_path).sessions():
        found += await _rows(conn, latest, session_id)
    if not found:
        return None
    return str(max(found, key=lambda row: str(row["created_at"]))["session_id"])


async def _search(
    run: Run, dataset_path: Path, archive_path: Path, config: BenchConfig, say: Callable
) -> RunResult:
    async with connect(archive=str(archive_path), compile_training=not config.quick) as conn:
        resume = await session_to_resume(conn, archive_path)
        run_config, prompt = search_setup(run, dataset_path, config, resume=resume)
        llm = "offline" if run.method == "leads-offline" else config.llm
        extra = {"system_prompt": prompt} if prompt else {}
        policy = make_policy(llm, conn, config.model, config.base_url, **extra)
        try:
            return await run_search(conn, policy, run_config, _ForwardingView(say))
        finally:
            backend = getattr(policy, "backend", None)
            if backend is not None:
                await backend.aclose()


@dataclass
class FinalModel:
    """The search's final candidate as its server shows it: real-named spec, weights and
    test scores (``evaluate_candidate``'s answer)."""

    spec: CandidateSpec
    state_dict: dict[str, torch.Tensor]
    evaluation: dict[str, Any]

    @property
    def activation_error(self) -> ActivationError:
        """The test activation-time error, from the evaluation's counts."""
        mae = self.evaluation.get("at_mae_ms")
        return ActivationError(
            mae=math.nan if mae is None else float(mae),
            n_compared=int(self.evaluation["at_compared"]),
            n_missing_pred=int(self.evaluation["at_missing_pred"]),
            n_missing_true=int(self.evaluation["at_missing_true"]),
        )


async def read_final_model(
    archive_path: Path, result: RunResult, candidate_id: str, config: BenchConfig
) -> FinalModel:
    """Spec, weights and test scores of ``candidate_id``, through a fresh server on the
    search's archive (the search's server has exited)."""
    async with connect(archive=str(archive_path), compile_training=not config.quick) as conn:
        rows = await _rows(
            conn,
            f"SELECT spec FROM candidates WHERE candidate_id = {_literal(candidate_id)}",
            result.session_id,
        )
        if not rows:
            raise RuntimeError(f"the archive {archive_path} has no candidate {candidate_id}")
        spec = rows[0]["spec"]
        spec = real_spec(archive_path, result, json.loads(spec) if isinstance(spec, str) else spec)
        weights = await conn.read_resource(f"candidate://{candidate_id}/weights.pt")
        if not isinstance(weights, bytes):
            raise RuntimeError(f"candidate {candidate_id}'s weights came back as text")
        evaluation = result.evaluation or {}
        if evaluation.get("candidate_id") != candidate_id or evaluation.get("split") != "test":
            evaluation = await _tool(
                conn,
                "evaluate_candidate",
                {"session_id": result.session_id, "candidate_id": candidate_id, "split": "test"},
            )
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    return FinalModel(spec, state, evaluation)


def real_spec(archive_path: Path, result: RunResult, shown: dict[str, Any]) -> CandidateSpec:
    """A spec as the session shows it, with the real reaction name behind its alias (from the
    session's truth file when the session is anonymised)."""
    if not result.anonymised:
        return CandidateSpec.model_validate(shown)
    aliases = ReactionAliases(TruthStore(archive_path).read(result.session_id).aliases)
    return CandidateSpec.model_validate(aliases.real_fields(shown))


def first_beat_activation_maps(
    spec: CandidateSpec,
    dataset: EPDataset,
    state_dict: dict[str, torch.Tensor],
    config: BenchConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and reference activation-time maps ``[1, N]`` of the first test beat (what
    the benchmark's figure shows), from the candidate's weights."""
    settings = training_config(config)
    device = settings.torch_device()
    model = load_model(spec, dataset, state_dict, settings).to(device).eval()
    first = dataset.indices("test")[:1]
    with torch.no_grad():
        predicted = predict(model, dataset, first, GraphCache(dataset, device), settings).cpu()
    u_pred = np.concatenate([dataset.initial_tmp(first)[:, None], predicted.numpy()], axis=1)
    at_true, _, _ = reference_activation_times(dataset, first)
    return activation_times(u_pred, dataset.t), at_true


def run_search_row(
    run: Run, dataset_path: Path, config: BenchConfig, say: Callable[[str], None]
) -> dict[str, Any]:
    """Run one search on one data set; its record (with the first test beat's activation
    maps under ``_at_pred`` and ``_at_true``)."""
    archive_path = config.out / "archives" / f"{run.key}.duckdb"
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = asyncio.run(_search(run, dataset_path, archive_path, config, say))
    if not result.completed or result.best is None:
        raise RuntimeError(f"the search did not finish with a model (session {result.session_id})")
    final_id = (result.finetuned or {}).get("candidate_id") or result.best.candidate_id
    final = asyncio.run(read_final_model(archive_path, result, final_id, config))
    dataset = load_dataset(dataset_path)
    at_pred, at_true = first_beat_activation_maps(final.spec, dataset, final.state_dict, config)
    true_reaction = str(dataset.meta["reaction"])
    summary = result.summary()
    error = final.activation_error
    return {
        "status": "ok",
        "test_mse": float(final.evaluation["mse"]),
        "test_at_mae_ms": error.mae,
        "test_at_missed": error.missed_fraction,
        # a hybrid reaction is named with its residual, so the table tells it from the plain one
        "reaction": final.spec.reaction
        + (" + residual" if final.spec.reaction_residual is not None else ""),
        "diffusion": final.spec.diffusion,
        "true_reaction": true_reaction,
        "reaction_identified": same_reaction(final.spec.reaction, true_reaction),
        "residual": final.spec.reaction_residual.model_dump()
        if final.spec.reaction_residual is not None
        else None,
        "wall_seconds": round(result.wall_seconds, 2),
        "elapsed_seconds": round(time.perf_counter() - started, 2),
        "candidates": len(result.candidates),
        "session_id": result.session_id,
        "archive": str(archive_path),
        "server_test_mse": (summary.get("test") or {}).get("mse"),
        "details": summary,
        "_at_pred": at_pred,
        "_at_true": at_true,
    }
