"""Tests of the ``leads-data`` command line (generate, list, show)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import corrupt_deflate_stream

from leads_engine.cli import main
from leads_engine.dataset import load_dataset

GENERATE_AP = ["generate", "--reaction", "ap", "--samples", "4", "--split", "2", "1", "1",
               "--duration", "60"]  # fmt: skip


@pytest.fixture
def generated(leads_home: Path) -> Path:
    """``$LEADS_HOME/datasets/ap.npz`` made by the CLI (4 samples, 60 ms)."""
    assert main(GENERATE_AP) == 0
    return leads_home / "datasets" / "ap.npz"


def test_generate_writes_a_valid_data_set(capsys, generated):
    assert generated.exists()
    ds = load_dataset(generated)
    assert ds.n_samples == 4 and ds.n_frames == 31 and ds.t[-1] == 60.0
    assert ds.meta["reaction"] == "aliev_panfilov" and ds.name == "ap"
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [2, 1, 1]
    assert "wrote" in capsys.readouterr().out


def test_generate_keeps_an_existing_set_without_force(generated, capsys):
    before = generated.stat().st_mtime_ns
    content = generated.read_bytes()
    capsys.readouterr()
    assert main(GENERATE_AP) == 0
    assert "exists" in capsys.readouterr().out
    assert generated.stat().st_mtime_ns == before and generated.read_bytes() == content
    assert main([*GENERATE_AP, "--seed", "5", "--force"]) == 0
    assert load_dataset(generated).meta["seed"] == 5


def test_generate_options(leads_home, tmp_path):
    out = tmp_path / "elsewhere"
    argv = ["generate", "--reaction", "ms", "--samples", "3", "--duration", "20", "--name",
            "mine", "--out", str(out), "--noise", "0.01", "--frame-interval", "1"]  # fmt: skip
    assert main(argv) == 0
    ds = load_dataset(out / "mine.npz")
    assert ds.meta["reaction"] == "mitchell_schaeffer" and ds.meta["noise_std"] == 0.01
    assert ds.n_frames == 21 and ds.n_samples == 3
    # default split for 3 samples: one each
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [1, 1, 1]
    assert not (leads_home / "datasets").exists()


def test_list_and_show(generated, tmp_path, capsys):
    capsys.readouterr()
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "ap" in listing and "ok" in listing
    figures = tmp_path / "fig"
    assert main(["show", "ap", "--plot", str(figures)]) == 0
    pngs = sorted(figures.glob("*.png"))
    assert len(pngs) == 2
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_show_json(generated, capsys):
    capsys.readouterr()
    assert main(["show", str(generated), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 4 and summary["reaction"] == "aliev_panfilov"


def test_list_without_data_sets(leads_home, capsys):
    assert main(["list"]) == 0
    assert "no data sets" in capsys.readouterr().out


def test_bad_reaction_returns_2(leads_home, capsys):
    assert main(["generate", "--reaction", "zz", "--samples", "3"]) == 2
    captured = capsys.readouterr()
    assert "unknown reaction model" in captured.err and "'zz'" in captured.err
    assert not (leads_home / "datasets").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--samples", "4", "--split", "2", "2", "2"], "must add up"),
        (["generate", "--reaction", "ap", "rm", "--name", "both"], "one reaction only"),
        (["show", "nothing_here"], "no data set"),
    ],
)
def test_errors_return_2(leads_home, capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_show_of_corrupted_file_returns_2(leads_home, capsys):
    folder = leads_home / "datasets"
    folder.mkdir(parents=True)
    (folder / "broken.npz").write_bytes(b"this is not an npz archive" * 40)
    assert main(["show", "broken"]) == 2
    assert "not a readable" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "invalid" in capsys.readouterr().out


def test_show_bad_sample_returns_2(generated, tmp_path, capsys):
    assert main(["show", "ap", "--plot", str(tmp_path), "--sample", "9"]) == 2
    assert "--sample" in capsys.readouterr().err


def test_show_of_damaged_stream_returns_2(generated, capsys):
    corrupt_deflate_stream(generated, "u.npy")
    assert main(["show", "ap"]) == 2


def test_console_script_help():
    script = shutil.which("leads-data") or str(Path(sys.executable).parent / "leads-data")
    assert os.path.exists(script), "console script leads-data is not installed"
    result = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in ("generate", "list", "show"):
        assert command in result.stdout


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_generated_file_is_plain_numpy(generated):
    with np.load(generated, allow_pickle=False) as archive:
        assert archive["u"].shape[0] == 4
        assert json.loads(str(archive["meta"]))["name"] == "ap"


@pytest.mark.parametrize("command", ["generate", "list", "show"])
def test_every_subcommand_prints_its_help(command, capsys):
    """argparse %-formats help texts: a bare percent sign in one breaks --help."""
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out
