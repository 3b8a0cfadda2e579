"""Reaction-name anonymisation (server/anonymise.py): a seeded bijection between catalog names
and aliases, masking of every spelling in text and data, and unmasking of the agent's SQL."""

from __future__ import annotations

from leads_server.anonymise import ReactionAliases

from leads_engine.reactions import REACTION_MODELS


def test_aliases_are_a_seeded_bijection_over_the_catalog() -> None:
    aliases = ReactionAliases.shuffled(3)
    assert set(aliases.mapping) == set(REACTION_MODELS)
    assert sorted(aliases.mapping.values()) == [f"reaction_{c}" for c in "ABCDE"]
    assert ReactionAliases.shuffled(3).mapping == aliases.mapping  # same seed, same aliases
    assert any(ReactionAliases.shuffled(s).mapping != aliases.mapping for s in range(4, 10))
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
    assert aliases.unmask_sql("SELECT 'reaction_A'") == "SELECT 'reaction_A'"


def test_the_agents_sql_finds_the_real_names() -> None:
    aliases = ReactionAliases({"aliev_panfilov": "reaction_A", "fenton_karma": "reaction_B"})
    sql = "SELECT * FROM candidates WHERE reaction IN ('reaction_A', 'reaction_B', 'reaction_AB')"
    assert aliases.unmask_sql(sql) == (
        "SELECT * FROM candidates WHERE reaction IN "
        "('aliev_panfilov', 'fenton_karma', 'reaction_AB')"
    )
