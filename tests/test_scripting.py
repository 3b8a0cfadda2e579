"""``leads_server.connect()``: the tools from a script, in-process, over stdio and over HTTP with
a bearer token, returning the pydantic result models; notebook display; the examples run as
written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import leads_server
import pytest
from http_server import http_server
from leads_server.models import CandidateRecord, QueryResult, TrainingResult
from leads_server.scripting import Figure, ToolCallError, Tools

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


async def _one_candidate(tools: Tools) -> tuple[str, TrainingResult]:
    session = await tools.start_session(dataset="tiny", budget=2, epochs=1, anonymise=False)
    await tools.select_reaction(session.session_id, "aliev_panfilov")
    draft = await tools.select_diffusion(session.session_id, "laplacian_global")
    assert draft.draft.diffusion == "laplacian_global"
    return session.session_id, await tools.train_candidate(session.session_id)


async def test_in_process_tools_return_the_result_models(home: Path) -> None:
    async with leads_server.connect(archive=home / "archive.duckdb") as tools:
        session_id, trained = await _one_candidate(tools)
        assert isinstance(trained, TrainingResult) and trained.status == "ok"
        record = await tools.get_candidate(trained.candidate_id)
        assert isinstance(record, CandidateRecord) and len(record.epochs) == 1
        table = await tools.query_archive("SELECT candidate_id, status FROM candidates")
        assert isinstance(table, QueryResult) and table.rows == [[trained.candidate_id, "ok"]]
        html = table._repr_html_()
        assert html.startswith("<table>") and f"<td>{trained.candidate_id}</td>" in html
        figures = await tools.figures(trained.candidate_id)
        assert [type(f) for f in figures] == [Figure] and figures[0]._repr_png_().startswith(PNG)
        with pytest.raises(ToolCallError, match="unknown session"):
            await tools.train_candidate("s-000000000000")
        with pytest.raises(ValueError):  # checked against the input model before the call
            await tools.start_session(budget=0)
    with pytest.raises(ValueError, match="target"):
        async with leads_server.connect("ftp://nowhere"):
            pass


async def test_stdio_tools_continue_a_session_of_an_earlier_process(home: Path) -> None:
    async with leads_server.connect("stdio") as tools:
        session_id, trained = await _one_candidate(tools)
    async with leads_server.connect("stdio") as tools:  # a fresh server process
        record = await tools.get_candidate(trained.candidate_id)
        assert record.session_id == session_id and record.status == "ok"


async def test_http_tools_with_a_bearer_token(home: Path) -> None:
    with http_server(home, "secret") as url:
        async with leads_server.connect(url, token="secret") as tools:
            catalogs = await tools.list_catalogs()
            assert len(catalogs.diffusion_templates) == 11


@pytest.mark.parametrize(
    ("example", "expected"),
    [("scripted_baseline.py", "test MSE"), ("custom_search.py", "reaction: reaction_")],
)
def test_the_examples_run_as_written(home: Path, example: str, expected: str) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example)]
        + ["--dataset", "tiny", "--budget", "2", "--epochs", "1"],
        env={**os.environ, "LEADS_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert expected in run.stdout


def test_the_documented_snippet_runs_as_written(home: Path) -> None:
    """The code block of ``leads_server.scripting``'s docstring (the README's scripting
    section), on the tiny set instead of the full-size benchmark."""
    import leads_server.scripting as scripting

    doc = scripting.__doc__ or ""
    block = doc.split(".. code-block:: python", 1)[1].split("\n\n", 1)[1]
    code = "\n".join(line[4:] for line in block.split("Every call goes through")[0].splitlines())
    assert 'dataset="ap"' in code
    run = subprocess.run(
        [sys.executable, "-c", code.replace('dataset="ap"', 'dataset="tiny"')],
        env={**os.environ, "LEADS_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    loss, diagnosis = run.stdout.strip().split(" ", 1)
    assert float(loss) > 0 and diagnosis
