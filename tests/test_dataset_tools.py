"""Data sets through the tools (a host user never needs the shell): listing (shape only, never
an anonymised session's set), generating a benchmark, importing a recording."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from server_calls import call, fails, save_tiny, start

from leads_engine.heart_mesh import make_lv_mesh
from leads_engine.recordings import make_egm_standin, standin_config

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio

SMALL = {  # the recordings tests' small stand-in, 4 beats
    "n_samples": 4,
    "split_sizes": (2, 1, 1),
    "duration_ms": 70.0,
    "seed": 1,
    "scar_radius_mm": 3.0,
    "scar_border_mm": 2.0,
    "pacing_radius_mm": 4.0,
    "n_electrodes": 16,
}


async def test_list_shows_shapes_and_hides_anonymised_sessions_sets(
    client: Client, home: Path
) -> None:
    listed = await call(client, "list_datasets")
    by_name = {entry["name"]: entry for entry in listed["datasets"]}
    assert {"ap", "rm", "ms", "fhn", "fk", "tiny"} <= set(by_name)
    assert by_name["ap"] == {"name": "ap", "kind": "benchmark", "saved": False, "summary": {}}
    tiny = by_name["tiny"]
    assert tiny["saved"] and tiny["kind"] == "simulated"
    assert tiny["summary"]["samples"] == 4 and tiny["summary"]["nodes"] == 200
    assert "reaction" not in tiny["summary"] and listed["notice"] is None
    save_tiny(home, name="secret")
    await start(client, dataset="secret", anonymise=True)
    listed = await call(client, "list_datasets")
    assert "secret" not in {entry["name"] for entry in listed["datasets"]}
    assert "1 data set(s) used by anonymised sessions" in listed["notice"]


async def test_generate_a_benchmark_keeps_a_saved_one(client: Client, home: Path) -> None:
    save_tiny(home, name="fk")  # saved already: nothing to simulate
    entry = await call(client, "generate_dataset", benchmark="fk")
    assert entry["saved"] and entry["kind"] == "benchmark" and entry["summary"]["nodes"] == 200
    refused = await fails(client, "generate_dataset", benchmark="xyz")
    assert "benchmark" in refused and "'ap'" in refused  # the choices, in one line


async def test_import_a_recording_then_start_a_session_on_it(
    client: Client, tmp_path: Path
) -> None:
    mesh = make_lv_mesh(200)
    egm = make_egm_standin(standin_config("ap", **SMALL), mesh=mesh, name="egm")
    files = {"mesh": tmp_path / "heart.vtk"}
    mesh.save(files["mesh"])
    for key, value in {
        "signals": egm.extras["signals"],
        "times": egm.t,
        "lead_field": egm.extras["H"],
        "pacing_sites": egm.pacing_site,
    }.items():
        files[key] = tmp_path / f"{key}.npy"
        np.save(files[key], value)
    arguments = {key: str(path) for key, path in files.items()}
    events: list[str] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        events.append(message or "")

    result = await client.call_tool(
        "import_recording", {"name": "lab_beats", **arguments}, progress_callback=progress
    )
    assert not result.is_error, result.content[0].text
    entry = result.structured_content
    assert entry["kind"] == "recording" and entry["summary"]["samples"] == 4
    assert events[-1] == "imported recording lab_beats"
    again = await fails(client, "import_recording", name="lab_beats", **arguments)
    assert "exists already" in again
    broken = await fails(
        client, "import_recording", name="broken", **{**arguments, "times": str(files["signals"])}
    )
    assert "cannot be imported" in broken
    started = await call(client, "start_session", dataset="lab_beats", anonymise=False)
    assert started["dataset"]["samples"] == 4
