"""Every generated set propagates: each generator reaction's wave reaches the whole bundled
mesh, and a set whose wave dies out is refused (or kept, loudly, on request).

Measured on the bundled 1119-node mesh with the default conductivity (3 beats, 300 ms; the
total activation time is the 500 ms default set's): every reaction activates 100% of the
nodes in every beat. Total activation: AP 134 ms, RM 179 ms, MS 28 ms on the 300-node quick
mesh, FHN 108 ms, BR 45 ms. Rogers and McCulloch's FitzHugh-Nagumo parameters (the FHN
defaults before issue 20) activated 3.1%.
"""

from __future__ import annotations

import pytest

from leads_engine.cli import main
from leads_engine.dataset import load_dataset
from leads_engine.generator import (
    MIN_ACTIVATED_FRACTION,
    BenchmarkConfig,
    PartialActivationError,
    generate_benchmark,
)

GENERATOR_REACTIONS = ("ap", "rm", "ms", "fhn", "fk", "br")
OLD_FHN = {"b": 0.013, "c1": 0.26, "d": 1.0}


@pytest.mark.parametrize("reaction", GENERATOR_REACTIONS)
def test_every_generator_reaction_activates_the_bundled_mesh(heart, reaction):
    config = BenchmarkConfig(
        reaction=reaction, n_samples=3, split_sizes=(1, 1, 1), duration_ms=300.0
    )
    activation = generate_benchmark(config, heart).meta["activation"]
    assert activation["fraction_activated_min"] >= MIN_ACTIVATED_FRACTION, activation
    assert activation["beats_stalled"] == activation["beats_truncated"] == 0


def test_a_wave_that_dies_out_is_refused_with_a_clear_message(heart):
    config = BenchmarkConfig(
        reaction="fhn",
        reaction_parameters=OLD_FHN,
        n_samples=3,
        split_sizes=(1, 1, 1),
        duration_ms=200.0,
    )
    with pytest.raises(PartialActivationError, match=r"activates only .*--allow-partial"):
        generate_benchmark(config, heart)
    kept = generate_benchmark(config, heart, allow_partial=True)
    activation = kept.meta["activation"]
    assert activation["fraction_activated_min"] < 0.1
    assert activation["beats_stalled"] == 3 and activation["partial_allowed"] is True


def test_a_short_window_is_not_a_failure_to_propagate(small_mesh):
    """A window that ends while the wave still spreads is kept, and counted as truncated."""
    config = BenchmarkConfig(reaction="ap", n_samples=3, split_sizes=(1, 1, 1), duration_ms=20.0)
    activation = generate_benchmark(config, small_mesh).meta["activation"]
    assert activation["fraction_activated_min"] < MIN_ACTIVATED_FRACTION
    assert activation["beats_stalled"] == 0 and activation["beats_truncated"] == 3


def test_leads_data_generate_prints_the_fraction_and_refuses_a_dying_wave(
    leads_home, capsys, monkeypatch
):
    common = ["--samples", "3", "--duration", "60"]
    assert main(["generate", "--reaction", "br", *common]) == 0
    out = capsys.readouterr().out
    assert "activated: 100.0% of the nodes" in out
    assert "not in the search catalog" in out
    assert load_dataset(leads_home / "datasets" / "br.npz").meta["reaction"] == "beeler_reuter"

    # a dying wave: the FHN time scale so slow that the paced patch recovers in place
    from leads_engine import cli

    original = cli.BenchmarkConfig

    def slow_fhn(**kwargs):
        return original(**kwargs, reaction_parameters={"time_scale": 0.2})

    monkeypatch.setattr(cli, "BenchmarkConfig", slow_fhn)
    assert main(["generate", "--reaction", "fhn", *common, "--duration", "200"]) == 2
    err = capsys.readouterr().err
    assert "dies out" in err and "--allow-partial" in err
    assert not (leads_home / "datasets" / "fhn.npz").exists()
    assert (
        main(["generate", "--reaction", "fhn", *common, "--duration", "200", "--allow-partial"])
        == 0
    )
    assert "warning" in capsys.readouterr().out
