"""The benchmark's fit cache: a fit trains once per spec, data, settings and start."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from leads_bench.fit_cache import FitCache, fit_key

from leads_engine.generator import BenchmarkConfig, generate_benchmark
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig

FAST = TrainingConfig(epochs=2, batch_size=2, steps_per_frame=5, compile=False)


@pytest.fixture(scope="module")
def tiny(small_mesh):
    config = BenchmarkConfig(
        reaction="ap", n_samples=5, split_sizes=(3, 1, 1), duration_ms=30.0, seed=2
    )
    return generate_benchmark(config, mesh=small_mesh, name="tiny_bench")


def test_fit_cache_trains_once_and_returns_the_same_fit(tiny, tmp_path):
    cache = FitCache(tmp_path / "fits")
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global", seed=3)
    first = cache(spec, tiny, FAST)
    second = FitCache(tmp_path / "fits")(spec, tiny, FAST)  # a new process would do this
    assert (cache.misses, cache.hits) == (1, 0)
    assert second.val_losses == first.val_losses
    assert second.diagnosis.text == first.diagnosis.text
    for name, value in first.state_dict.items():
        assert torch.equal(second.state_dict[name], value)
    # fine-tuning from those weights is a different fit; other settings are too
    assert fit_key(spec, tiny, FAST, first.state_dict) != fit_key(spec, tiny, FAST)
    assert fit_key(spec, tiny, FAST) != fit_key(spec, tiny, TrainingConfig(epochs=3))
    assert fit_key(spec.model_copy(update={"seed": 4}), tiny, FAST) != fit_key(spec, tiny, FAST)
    # the same name regenerated with other data is another fit
    changed = dataclasses.replace(tiny, u=tiny.u * 0.5)
    assert fit_key(spec, changed, FAST) != fit_key(spec, tiny, FAST)
    # settings left to the template and the template's own, spelt out, are the same fit
    default = TrainingConfig(epochs=3)
    spelt_out = TrainingConfig(epochs=3, batch_size=2, conductivity_learning_rate=0.03)
    assert fit_key(spec, tiny, default) == fit_key(spec, tiny, spelt_out)
    gat = spec.model_copy(update={"diffusion": "gat"})
    assert fit_key(gat, tiny, default) != fit_key(gat, tiny, spelt_out)


def test_fit_cache_ignores_a_torn_entry(tiny, tmp_path):
    cache = FitCache(tmp_path)
    spec = CandidateSpec(reaction="ap", diffusion="laplacian_global")
    key = fit_key(spec, tiny, FAST)
    (tmp_path / f"{key}.json").write_text("{not json")  # a crash mid-write of an old version
    result = cache(spec, tiny, FAST)
    assert result.status == "ok" and cache.misses == 1
    assert json.loads((tmp_path / f"{key}.json").read_text())["status"] == "ok"
