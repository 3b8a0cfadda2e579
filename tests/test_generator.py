"""Tests of the synthetic benchmark generator.

The full default benchmark (32 samples, 500 ms) took 2.1-2.9 s per reaction on 2 cores when
measured; its acceptance numbers were: every sample activates 100 % of the nodes, the worst
Spearman correlation of AT with graph distance on nodes away from the scar is 0.962 (ap),
0.948 (rm), 0.970 (ms), and max u in the last frame is 8e-5 (ap), 5e-10 (rm), 2e-14 (ms).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import leads_engine
from leads_engine.dataset import DatasetError, load_dataset
from leads_engine.generator import (
    BenchmarkConfig,
    assign_split,
    benchmark_path,
    choose_pacing_sites,
    conductivity_map,
    generate_benchmark,
    pacing_exclusion,
)
from leads_engine.metrics import activation_times
from leads_engine.reactions import build_reaction
from leads_engine.simulator import Pacing, simulate

SMALL = {"reaction": "ap", "n_samples": 6, "split_sizes": (4, 1, 1), "duration_ms": 200.0}


@pytest.fixture(scope="module")
def small_config() -> BenchmarkConfig:
    return BenchmarkConfig(**SMALL, seed=3)


@pytest.fixture(scope="module")
def small_set(heart, small_config):
    return generate_benchmark(small_config, heart)


def test_deterministic_under_a_seed(heart, small_config, small_set):
    again = generate_benchmark(small_config, heart)
    for key in ("u", "t", "pacing_site", "split", "conductivity"):
        assert np.array_equal(getattr(again, key), getattr(small_set, key)), key
    other = generate_benchmark(BenchmarkConfig(**SMALL, seed=4), heart)
    assert not np.array_equal(other.pacing_site, small_set.pacing_site)
    assert not np.array_equal(other.conductivity, small_set.conductivity)
    assert not np.array_equal(other.u, small_set.u)


def test_shapes_and_split_sizes(heart, small_set):
    assert small_set.u.shape == (6, 101, heart.n_nodes)
    assert np.allclose(small_set.t, np.arange(101) * 2.0)
    assert [len(small_set.indices(s)) for s in ("train", "val", "test")] == [4, 1, 1]
    assert np.isfinite(small_set.u).all()


def test_meta_records_the_recipe(heart, small_config, small_set, tmp_path):
    meta = small_set.meta
    assert meta["generator_version"] == leads_engine.__version__
    assert meta["reaction"] == "aliev_panfilov" and meta["name"] == "aliev_panfilov"
    defaults = build_reaction("ap", learnable=False).parameter_values()
    assert meta["reaction_parameters"] == pytest.approx(defaults)
    assert meta["config"] == asdict(small_config) and meta["seed"] == 3
    assert meta["mesh"] == "heart_lv" and meta["noise_std"] == 0.0
    # and survives the JSON round trip of the file
    stored = load_dataset(small_set.save(tmp_path / "small.npz")).meta
    assert stored["config"]["split_sizes"] == [4, 1, 1]
    assert stored["config"]["seed"] == 3 and stored["config"]["reaction"] == "aliev_panfilov"
    assert stored["reaction_parameters"] == pytest.approx(defaults)
    assert stored["scar_center"] == meta["scar_center"]


def test_reaction_parameters_are_used(heart):
    config = BenchmarkConfig(**{**SMALL, "n_samples": 1, "split_sizes": (1, 0, 0)},
                             reaction_parameters={"a": 0.1})  # fmt: skip
    ds = generate_benchmark(config, heart)
    assert ds.meta["reaction_parameters"]["a"] == pytest.approx(0.1)


def test_pacing_sites_are_unique_and_allowed(heart, small_config, small_set):
    sites = small_set.pacing_site
    assert len(np.unique(sites)) == len(sites)
    # replay the generator's draws to recover its exclusion mask
    rng = np.random.default_rng(small_config.seed)
    conductivity = conductivity_map(heart, small_config, rng)
    assert conductivity.scar_center == small_set.meta["scar_center"]
    assert np.array_equal(conductivity.sigma, small_set.conductivity)
    excluded = pacing_exclusion(heart, small_config, conductivity)
    assert 0 < excluded.sum() < heart.n_nodes / 2
    assert not excluded[sites].any()
    # farthest-point sampling spreads the sites out
    distances = heart.graph_distances(sites)[:, sites]
    assert distances[~np.eye(len(sites), dtype=bool)].min() > 2 * small_config.pacing_radius_mm


def test_choose_pacing_sites_avoids_and_refuses(heart):
    rng = np.random.default_rng(0)
    avoid = rng.uniform(size=heart.n_nodes) < 0.7
    sites = choose_pacing_sites(heart, 20, avoid, rng)
    assert len(set(sites.tolist())) == 20 and not avoid[sites].any()
    only_three = np.ones(heart.n_nodes, dtype=bool)
    only_three[[3, 50, 700]] = False
    assert sorted(choose_pacing_sites(heart, 3, only_three, rng).tolist()) == [3, 50, 700]
    with pytest.raises(ValueError, match="only 3 nodes available for 4"):
        choose_pacing_sites(heart, 4, only_three, rng)


def test_assign_split():
    labels = assign_split(10, (6, 3, 1), np.random.default_rng(0))
    assert sorted(labels.tolist()) == ["test"] + ["train"] * 6 + ["val"] * 3
    again = assign_split(10, (6, 3, 1), np.random.default_rng(0))
    assert np.array_equal(labels, again)
    assert not all(
        np.array_equal(labels, assign_split(10, (6, 3, 1), np.random.default_rng(s)))
        for s in range(1, 5)
    )


def test_conductivity_map_has_scar_and_gradient(heart):
    config = BenchmarkConfig()
    base, (g_apex, g_base) = config.base_conductivity, config.gradient_apex_base
    z = heart.points[:, 2]
    height = (z - z.min()) / (z.max() - z.min())
    gradient = g_apex + (g_base - g_apex) * height
    cmap = conductivity_map(heart, config, np.random.default_rng(0))
    assert 0.3 < height[cmap.scar_center] < 0.7
    assert cmap.scar_mask[cmap.scar_center] and cmap.scar_mask.sum() > 10
    # the scar core is at scar_ratio of the local healthy value
    core = cmap.scar_mask
    assert np.allclose(cmap.sigma[core], config.scar_ratio * base * gradient[core])
    # the scar factor sigma / (base * gradient) spans [scar_ratio, 1]
    factor = cmap.sigma / (base * gradient)
    assert factor.min() == pytest.approx(config.scar_ratio) and factor.max() == pytest.approx(1.0)
    assert cmap.sigma.min() >= config.scar_ratio * base * g_base
    assert cmap.sigma.min() <= config.scar_ratio * base * gradient[cmap.scar_center]
    # beyond core + border the tissue is healthy, on the apex-to-base gradient
    distance = heart.geodesic_distances(cmap.scar_center)[0]
    healthy = distance >= config.scar_radius_mm + config.scar_border_mm
    assert np.allclose(cmap.sigma[healthy], base * gradient[healthy])
    assert cmap.sigma.max() == pytest.approx(base * g_apex, rel=1e-3)
    assert np.all(cmap.sigma <= base * gradient + 1e-12)
    # without a scar the map is the gradient alone: highest at the apex, lowest at the base
    plain = conductivity_map(heart, BenchmarkConfig(scar_ratio=1.0), np.random.default_rng(0))
    assert np.allclose(plain.sigma, base * gradient)
    assert plain.sigma[np.argmin(z)] == pytest.approx(base * g_apex)
    assert plain.sigma[np.argmax(z)] == pytest.approx(base * g_base)


def test_noise_std(heart, small_set):
    config = BenchmarkConfig(**SMALL, seed=3, noise_std=0.02)
    noisy = generate_benchmark(config, heart)
    noise = noisy.u.astype(np.float64) - small_set.u
    assert noise.std() == pytest.approx(0.02, rel=0.02)
    assert abs(noise.mean()) < 1e-3
    assert noisy.meta["noise_std"] == 0.02 and noisy.summary()["noise_std"] == 0.02


def test_chunked_generation_equals_one_simulation(heart, small_set):
    sites = small_set.pacing_site
    with torch.no_grad():
        whole = simulate(
            heart.laplacian(small_set.conductivity),
            build_reaction("ap", learnable=False),
            Pacing(sites.tolist(), radius=6.0),
            small_set.t,
            heart.graph_distances(sites),
            step_size=0.05,
            device="cpu",
        )
    assert np.abs(whole.u.numpy() - small_set.u).max() < 1e-5


def test_progress_is_reported(heart):
    seen: list[float] = []
    config = BenchmarkConfig(
        **{**SMALL, "n_samples": 1, "split_sizes": (1, 0, 0), "duration_ms": 40.0}
    )
    generate_benchmark(config, heart, progress=seen.append, name="custom")
    assert seen == sorted(seen) and len(seen) >= 2
    assert seen[-1] == pytest.approx(1.0) and seen[0] > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_samples": 5, "split_sizes": (3, 1, 0)}, "must add up"),
        ({"n_samples": 2, "split_sizes": (0, 1, 1)}, "training split"),
        ({"scar_ratio": 0.0}, "scar_ratio"),
        ({"scar_ratio": 1.5}, "scar_ratio"),
        ({"frame_interval_ms": 0.01}, "frame interval"),
        ({"duration_ms": 0.0}, "duration"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"reaction": "hodgkin_huxley"}, "unknown reaction"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig(**kwargs)


def test_config_resolves_aliases():
    assert BenchmarkConfig(reaction="MS").reaction == "mitchell_schaeffer"


@pytest.mark.slow
@pytest.mark.parametrize("reaction", ["ap", "rm", "ms"])
def test_default_benchmark_acceptance(heart, reaction):
    config = BenchmarkConfig(reaction=reaction)
    ds = generate_benchmark(config, heart)
    assert ds.u.shape == (32, 251, heart.n_nodes)
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [20, 6, 6]
    at = activation_times(ds.u, ds.t)
    activated = np.isfinite(at).mean(axis=1)
    assert activated.min() >= 0.99
    healthy = ds.conductivity >= 0.95 * config.base_conductivity * min(config.gradient_apex_base)
    assert healthy.mean() > 0.8
    distances = heart.graph_distances(ds.pacing_site)
    rho = [spearmanr(distances[i, healthy], at[i, healthy]).statistic for i in range(32)]
    assert min(rho) >= 0.9, f"worst sample {int(np.argmin(rho))}: rho {min(rho):.3f}"
    assert ds.u[:, -1].max() < 0.1  # fully repolarised inside the window


def test_benchmark_path_generates_a_missing_benchmark_once(leads_home, small_set, monkeypatch):
    made = []

    def small_generation(config, progress=None, name=None):
        made.append((config.reaction, name))
        return small_set

    monkeypatch.setattr(leads_engine.generator, "generate_benchmark", small_generation)
    path = benchmark_path("ap")
    assert path == leads_home / "datasets" / "ap.npz" and path.exists()
    assert made == [("aliev_panfilov", "ap")]
    assert benchmark_path("ap") == path and len(made) == 1  # found, not made again
    with pytest.raises(DatasetError, match="no data set 'heart_of_glass'"):
        benchmark_path("heart_of_glass")  # neither a data set nor a reaction model
