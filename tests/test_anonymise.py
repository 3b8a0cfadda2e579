"""Reaction-name anonymisation (server/anonymise.py): a bijection between catalog names and
aliases drawn from the OS's random source, specs shown under aliases and turned back, the public
part of a data set's summary, and masking of every spelling in text and data (for migrations)."""

from __future__ import annotations

import random

from leads_server.anonymise import ReactionAliases, dataset_handle, public_summary

from leads_engine.reactions import REACTION_MODELS
from leads_engine.spec import CandidateSpec


def test_aliases_are_a_bijection_over_the_catalog_that_no_seed_reproduces() -> None:
    aliases = ReactionAliases.shuffled(random.Random(3))
    assert set(aliases.mapping) == set(REACTION_MODELS)
    assert sorted(aliases.mapping.values()) == [f"reaction_{c}" for c in "ABCDE"]
    assert ReactionAliases.shuffled(random.Random(3)).mapping == aliases.mapping
    drawn = {tuple(sorted(ReactionAliases.shuffled().mapping.items())) for _ in range(40)}
    assert len(drawn) > 1  # 120 orders: 40 draws from the OS's source are not all the same
    for real, alias in aliases.mapping.items():
        assert aliases.show(real) == alias and aliases.real(alias) == real
    assert aliases.show("neural") == "neural" and aliases.real("neural") == "neural"
    assert aliases.enabled and not ReactionAliases.disabled().enabled


def test_every_spelling_of_a_name_is_masked() -> None:
    aliases = ReactionAliases({"aliev_panfilov": "reaction_A"})
    text = "aliev_panfilov, Aliev-Panfilov, ALIEV PANFILOV and AlievPanfilov fit well"
    assert aliases.mask_text(text) == ("reaction_A, reaction_A, reaction_A and reaction_A fit well")
    assert aliases.mask_text("xaliev_panfilov aliev_panfilov2") == (
        "xaliev_panfilov aliev_panfilov2"  # only whole names
    )


def test_masking_reaches_into_data_and_keys() -> None:
    aliases = ReactionAliases({"fenton_karma": "reaction_B"})
    data = {"fenton_karma": ["Fenton-Karma", ("FentonKarma", 3)], "n": 1.5, "none": None}
    assert aliases.mask(data) == {
        "reaction_B": ["reaction_B", ["reaction_B", 3]],
        "n": 1.5,
        "none": None,
    }


def test_disabled_aliases_change_nothing() -> None:
    aliases = ReactionAliases.disabled()
    data = {"aliev_panfilov": ("Aliev-Panfilov",)}
    assert aliases.mask(data) is data
    assert aliases.mask_text("aliev_panfilov") == "aliev_panfilov"


def test_a_spec_is_shown_under_its_alias_and_turned_back() -> None:
    aliases = ReactionAliases({"aliev_panfilov": "reaction_C"})
    spec = CandidateSpec(reaction="aliev_panfilov", diffusion="laplacian_nodewise")
    shown = aliases.shown_spec(spec)
    assert shown.reaction == "reaction_C" and spec.reaction == "aliev_panfilov"
    assert shown.code_hash() == spec.code_hash()
    back = aliases.real_fields(shown.model_dump())
    assert CandidateSpec.model_validate(back) == spec
    neural = CandidateSpec(reaction="neural", diffusion="gcn")
    assert aliases.shown_spec(neural).reaction == "neural"


def test_an_anonymised_summary_keeps_shape_and_sampling_only() -> None:
    summary = {
        "name": "ap",
        "reaction": "aliev_panfilov",
        "samples": 8,
        "frames": 41,
        "nodes": 300,
        "noise_std": 0.01,
        "seed": 3,
    }
    handle = dataset_handle("s-0123456789ab")
    assert handle == "data-012345"
    assert public_summary(summary, handle) == {
        "name": handle,
        "samples": 8,
        "frames": 41,
        "nodes": 300,
    }


def test_a_fibred_set_shows_its_fibres_but_not_its_anisotropy() -> None:
    summary = {"name": "ap_aniso", "nodes": 10, "fibers": "per cell", "anisotropy": 3.0}
    shown = public_summary(summary, "data-abc123")
    assert shown == {"name": "data-abc123", "nodes": 10, "fibers": "per cell"}
