"""Shared fixtures of the engine-core tests: meshes, small data sets, an isolated LEADS_HOME."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from leads_engine.dataset import EPDataset
from leads_engine.heart_mesh import bundled_mesh, make_lv_mesh
from leads_engine.mesh import Mesh


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    """Run torch on one thread: the small sparse products here gain nothing from two, and on a
    shared 2-core machine a second OpenMP thread that has to wait for a busy core made a 4-sample
    generation 40x slower (0.2 s -> 8 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def heart() -> Mesh:
    """The bundled 1119-node left-ventricle surface."""
    return bundled_mesh()


@pytest.fixture(scope="session")
def small_mesh() -> Mesh:
    """A 200-node ventricle-like surface for fast data-set tests."""
    return make_lv_mesh(200)


@pytest.fixture(scope="session")
def tiny(small_mesh):
    """An Aliev-Panfilov set on the 200-node mesh: 6 samples (split 3/2/1), 60 ms."""
    from leads_engine.generator import BenchmarkConfig, generate_benchmark

    config = BenchmarkConfig(
        reaction="ap", n_samples=6, split_sizes=(3, 2, 1), duration_ms=60.0, seed=3
    )
    return generate_benchmark(config, mesh=small_mesh, name="tiny")


@pytest.fixture
def leads_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$LEADS_HOME`` pointed at a fresh temporary folder."""
    home = tmp_path / "leads_home"
    monkeypatch.setenv("LEADS_HOME", str(home))
    return home


def dataset_fields(mesh: Mesh, samples: int = 4, frames: int = 11, seed: int = 0) -> dict:
    """Keyword arguments of a valid :class:`EPDataset` on ``mesh`` (random TMP in [0, 1])."""
    rng = np.random.default_rng(seed)
    splits = (["train"] * samples)[: max(1, samples - 2)] + ["val", "test"][: samples - 1]
    return {
        "points": np.array(mesh.points),
        "cells": np.array(mesh.cells),
        "u": rng.uniform(0.0, 1.0, (samples, frames, mesh.n_nodes)).astype(np.float32),
        "t": np.arange(frames) * 2.0,
        "pacing_site": rng.choice(mesh.n_nodes, samples, replace=False).astype(np.int64),
        "split": np.array(splits[:samples]),
        "conductivity": np.linspace(0.3, 1.9, mesh.n_nodes),
        "meta": {"name": "tiny", "reaction": "aliev_panfilov", "seed": seed, "nested": [1, 2]},
    }


@pytest.fixture
def make_dataset(small_mesh: Mesh) -> Callable[..., EPDataset]:
    """Factory of small valid data sets; keyword overrides replace fields."""

    def factory(**overrides) -> EPDataset:
        return EPDataset(**{**dataset_fields(small_mesh), **overrides})

    return factory


def corrupt_deflate_stream(path: Path, member: str) -> None:
    """Overwrite the first byte of ``member``'s compressed data with an invalid deflate block.

    ``0xFF`` sets BTYPE = 11 (reserved), which zlib refuses with "invalid block type" before
    any CRC check; the zip directory stays intact, so the archive still opens.
    """
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        assert info.compress_type == zipfile.ZIP_DEFLATED
    data = bytearray(path.read_bytes())
    offset = info.header_offset
    assert data[offset : offset + 4] == b"PK\x03\x04"
    name_length, extra_length = struct.unpack("<HH", data[offset + 26 : offset + 30])
    data[offset + 30 + name_length + extra_length] = 0xFF
    path.write_bytes(bytes(data))


def run_python(script: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (dedented) in a fresh interpreter that imports this checkout; a test's way
    to have a process killed or crash without taking the test process with it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
