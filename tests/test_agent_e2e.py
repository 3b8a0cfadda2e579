"""``leads-agent`` end to end: the CLI entry point, the bundled server over stdio, the offline
policy on a tiny data set; a stopped session resumed to its budget; report and JSON summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from leads_agent.cli import main

from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.heart_mesh import make_lv_mesh

pytest.importorskip("leads_server.cli")

#: enough for the offline policy to screen all six reactions (it screens at most budget - 2):
#: the aliases are drawn at random, so a smaller budget would screen a random subset
BUDGET = 8


@pytest.fixture
def tiny_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$LEADS_HOME`` with the 4-sample, 200-node data set ``tiny`` (true reaction: AP)."""
    home = tmp_path / "home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    dataset = generate_benchmark(
        BenchmarkConfig(reaction="ap", n_samples=4, split_sizes=(2, 1, 1), duration_ms=40.0),
        mesh=make_lv_mesh(200),
        name="tiny",
    )
    dataset.save(home / "datasets" / "tiny.npz")
    return home


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_discover_stops_resumes_and_reports(tiny_home: Path, capsys: pytest.CaptureFixture):
    common = ["--epochs", "1", "--finetune", "1", "--json"]
    # a run stopped after 3 steps stays resumable: no fine-tuning, no evaluation yet
    assert (
        main(
            ["discover", "--dataset", "tiny", "--budget", str(BUDGET), "--max-steps", "3", *common]
        )
        == 0
    )
    first = last_json(capsys.readouterr().out)
    assert first["completed"] is False and first["steps"] == 3 and first["test"] is None
    session = first["session_id"]

    report_dir = tiny_home / "report"
    assert main(["discover", "--resume", session, "--report", str(report_dir), *common]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["session_id"] == session and summary["completed"] is True
    searched = [c for c in summary["candidates"] if c["operation"] != "finetune"]
    assert len(searched) == BUDGET
    assert [c["step"] for c in searched] == list(range(1, BUDGET + 1))
    assert summary["anonymised"] is True
    assert all(c["reaction"].startswith("reaction_") or c["reaction"] == "neural" for c in searched)
    assert any(c["reaction"] == "neural" for c in searched)  # all six screened

    # screening: the first steps compare reactions under laplacian_global, and the search
    # then keeps the reaction with the lowest validation loss under that diffusion
    screen = [c for c in searched if c["diffusion"] == "laplacian_global"]
    assert len({c["reaction"] for c in screen}) == len(screen) >= 3
    best_screen = min((c for c in screen if c["val_loss"] is not None), key=lambda c: c["val_loss"])
    later = searched[len(screen) :]
    assert later and all(c["reaction"] == best_screen["reaction"] for c in later)
    # on this synthetic set the chosen reaction is the true one (Aliev-Panfilov)
    # (the names are revealed to the user after the search, from the server's truth files)
    revealed = summary["revealed"]
    assert revealed["unavailable"] is None and revealed["dataset"] == "tiny"
    assert revealed["true_reaction"] == "aliev_panfilov"
    assert revealed["aliases"][best_screen["reaction"]] == "aliev_panfilov"

    assert summary["finetuned"]["status"] == "ok"
    assert summary["test"]["mse"] > 0
    assert summary["report"] == str(report_dir / "report.md")
    text = (report_dir / "report.md").read_text()
    assert "## Search trajectory" in text and "Screening reactions" in text
    assert "test MSE" in text
    assert "## Revealed after the search" in text
    assert "**aliev_panfilov** (the true reaction)" in text
    for name in ("activation_map.png", "training_curves.png", "validation_per_step.png"):
        assert (report_dir / name).read_bytes()[:4] == b"\x89PNG"
    spec = json.loads((report_dir / "best_model_spec.json").read_text())
    assert spec["spec"]["diffusion"] == summary["best"]["diffusion"]


def test_resume_of_an_unknown_session_is_a_clear_error(tiny_home: Path, capsys):
    assert main(["discover", "--resume", "s-000000000000", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cannot resume session s-000000000000" in err and "Traceback" not in err


def test_unreachable_server_url_is_a_clear_error(capsys):
    assert main(["discover", "--server-url", "http://127.0.0.1:9/mcp", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err and "Traceback" not in err


def test_json_with_quiet_is_accepted_since_json_implies_quiet(tiny_home: Path, capsys):
    """``--json`` implies ``--quiet``; saying both is not a usage error (exit 2)."""
    assert main(["discover", "--resume", "s-000000000000", "--json", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cannot resume session s-000000000000" in err and "usage:" not in err


def test_a_baseline_on_a_reaction_outside_the_catalog_says_so(tiny_home: Path, capsys):
    """The data set names its true reaction, which the catalog lacks: the baselines that fix the
    true reaction say exactly that, naming the reaction and what to run instead."""
    dataset = generate_benchmark(
        BenchmarkConfig(reaction="ap", n_samples=4, split_sizes=(2, 1, 1), duration_ms=20.0),
        mesh=make_lv_mesh(200),
        name="outside",
    )
    dataset.meta["reaction"] = "bueno_orovio_cherry_fenton"
    dataset.save(tiny_home / "datasets" / "outside.npz")
    argv = ["baseline", "--method", "hybrid-gat", "--dataset", "outside", "--epochs", "1"]
    assert main([*argv, "--quiet"]) == 1
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "'bueno_orovio_cherry_fenton' is not in the reaction catalog" in err
    assert "does not name its true reaction" not in err and "Traceback" not in err
