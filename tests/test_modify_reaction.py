"""Edited reaction code (modify_reaction): the static rules for reaction source, the sandboxed
trial of its rates, the spec field that carries it, and the tool end to end through the MCP
client (train, fine-tune, evaluate, reload; refusals archived)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from leads_server.app import LeadsServer, build_server
from leads_server.jobs import sandbox_available
from mcp import Client
from server_calls import REAL_NAMES, call, fails, start, train

from leads_engine.hybrid import HybridModel
from leads_engine.reaction_trial import REST_TOLERANCE_PER_MS, dynamic_check
from leads_engine.reactions import (
    REACTION_MODELS,
    MitchellSchaeffer,
    ReactionSourceError,
    catalog_source,
    load_reaction_class,
)
from leads_engine.sandbox import check_source
from leads_engine.spec import CandidateSpec
from leads_engine.training import TrainingConfig, load_model

pytest_plugins = ("server_fixtures",)

GATE = 'closing = smooth_step(u - p["v_gate"])'
#: Mitchell-Schaeffer with a wider gate switch (logistic width 0.01 instead of 0.005)
WIDER_GATE = catalog_source("ms").replace(GATE, 'closing = smooth_step(u - p["v_gate"], 0.01)')

MODEL = """\
import torch
from leads_engine.reactions.base import ParameterRange, ReactionModel


class Cubic(ReactionModel):
    name = "cubic"
    state_names = ("v",)
    resting_state = (0.0, 0.0)
    parameter_ranges = {"a": ParameterRange(0.15, 0.02, 0.4, description="threshold")}
    time_scale_range = ParameterRange(1.0, 0.05, 20.0, log=True)

    def rates(self, u, w, p):
{body}
"""
HEALTHY = (
    "        v = w[0]\n        return u * (u - p['a']) * (1 - u) - v, (0.01 * (u - v)).unsqueeze(0)"
)


def model(body: str) -> str:
    """A small cubic excitable model whose ``rates`` body is ``body`` (8-space indented)."""
    return MODEL.replace("{body}", body)


HOSTILE_SNIPPETS = {
    "import-not-allowed": "import os\n",
    "forbidden-call": "def f():\n    return open('/etc/passwd')\n",
    "no-dunder": "def f(x):\n    return x.__class__\n",
    "forbidden-attribute": "def f():\n    return torch.load\n",
    "module-side-effect": "X = print('at import')\n",
}


# ---------------------------------------------------------------------------- static rules


def test_catalog_reaction_sources_pass_the_reaction_rules_and_not_the_diffusion_ones() -> None:
    for name in REACTION_MODELS:
        source = catalog_source(name)
        assert "from .base" not in source and check_source(source, "reaction") == []
        assert any(v.rule == "interface" for v in check_source(source))  # no Diffusion class
    assert check_source(model(HEALTHY), "reaction") == []


@pytest.mark.parametrize("rule", sorted(HOSTILE_SNIPPETS))
def test_hostile_reaction_code_is_refused_by_the_same_rules(rule: str) -> None:
    violations = check_source(HOSTILE_SNIPPETS[rule] + model(HEALTHY), "reaction")
    assert rule in {v.rule for v in violations}, violations


def test_reaction_interface_rules() -> None:
    def rules(source: str) -> set[str]:
        return {v.rule for v in check_source(source, "reaction")}

    twice = model(HEALTHY) + "\n\nclass Other(ReactionModel):\n    pass\n"
    assert "interface" in rules(twice)
    no_rates = model(HEALTHY).replace("def rates(self, u, w, p)", "def rate(self, u, w, p)")
    assert "interface" in rules(no_rates)
    wrong_signature = model(HEALTHY).replace("rates(self, u, w, p)", "rates(self, u, p)")
    assert "interface" in rules(wrong_signature)
    # only the base's public names, without aliases, and only constant ranges
    aliased = model(HEALTHY).replace("ReactionModel\n", "ReactionModel as Base\n", 1)
    assert "import-not-allowed" in rules(aliased)
    engine = "from leads_engine.dataset import load_dataset\n" + model(HEALTHY)
    assert "import-not-allowed" in rules(engine)
    computed = model(HEALTHY).replace("ParameterRange(0.15,", "ParameterRange(abs(-0.15),")
    assert "module-side-effect" in rules(computed)
    # a call in a class constant stays refused for diffusion code
    diffusion = "from torch import nn\n\nclass Diffusion(nn.Module):\n    X = abs(1)\n"
    assert "module-side-effect" in {v.rule for v in check_source(diffusion)}


# ---------------------------------------------------------------------------- dynamic check


def test_catalog_models_pass_the_dynamic_check() -> None:
    for name in REACTION_MODELS:
        result = dynamic_check(catalog_source(name))
        assert result["accepted"], (name, result["message"])
    edited = dynamic_check(WIDER_GATE)
    assert edited["accepted"] and "gradients reach 6 of 6" in edited["message"]


@pytest.mark.parametrize(
    ("body", "rule", "words"),
    [
        (
            "        return torch.log(u - 2.0) * p['a'], w * 0",
            "rates-nonfinite",
            ("NaN/Inf", "u=0"),
        ),
        (
            "        return (torch.sqrt(0.5 - u) - 0.5**0.5) * p['a'] - w[0], w * 0",
            "rates-nonfinite",
            ("grid", "first at (u=0.", "v=0)"),
        ),
        ("        return (u - p['a']) * 0.01, w * 0", "rest-drift", ("not an equilibrium",)),
        ("        return u * p['a'], w[0] * 0", "rates-shape", ("dw has shape",)),
        ("        return u * 0.0 - w[0], w * 0", "no-gradient", ("a",)),
    ],
)
def test_the_dynamic_check_refuses_broken_rates(body: str, rule: str, words: tuple) -> None:
    result = dynamic_check(model(body))
    assert not result["accepted"] and result["rule"] == rule, result
    assert all(word in result["message"] for word in words), result["message"]
    assert result["line"] == 12  # the line of rates


def test_rest_tolerance_accepts_a_slow_drift_only() -> None:
    slow = f"        return u * (u - p['a']) * (1 - u) + {REST_TOLERANCE_PER_MS / 2}, w * 0"
    assert dynamic_check(model(slow))["accepted"]


def test_the_loader_finds_exactly_one_model() -> None:
    assert load_reaction_class(WIDER_GATE).__name__ == "MitchellSchaeffer"
    with pytest.raises(ReactionSourceError, match="exactly one"):
        load_reaction_class("import torch\n")


# ---------------------------------------------------------------------------- the spec


def test_spec_round_trip_and_identity() -> None:
    plain = CandidateSpec(reaction="ms", diffusion="laplacian_global")
    assert "reaction_source" not in plain.model_dump()  # dumps exactly as before
    assert plain.code_hash() is None and not plain.has_edited_code
    edited = plain.model_copy(update={"reaction_source": WIDER_GATE})
    loaded = CandidateSpec.model_validate_json(edited.model_dump_json())
    assert loaded == edited and loaded.reaction_source == WIDER_GATE and loaded.has_edited_code
    other = edited.model_copy(update={"reaction_source": catalog_source("ms")})
    assert None is not edited.code_hash() != other.code_hash() is not None
    # a diffusion-only edit keeps the hash it always had
    diffusion_only = plain.model_copy(update={"diffusion_source": "x = 1\n"})
    both = diffusion_only.model_copy(update={"reaction_source": WIDER_GATE})
    assert diffusion_only.code_hash() != both.code_hash() != edited.code_hash()
    with pytest.raises(ValueError, match="not 'neural'"):
        CandidateSpec(reaction="neural", reaction_source=WIDER_GATE, diffusion="laplacian_global")


def test_an_edited_reaction_builds_and_is_never_compiled(home: Path) -> None:
    from leads_engine.dataset import load_dataset

    dataset = load_dataset(home / "datasets" / "tiny.npz")
    spec = CandidateSpec(reaction="ms", reaction_source=WIDER_GATE, diffusion="laplacian_global")
    built = HybridModel.from_spec(spec, dataset.n_nodes)
    assert type(built.reaction).__name__ == "MitchellSchaeffer"
    assert not isinstance(built.reaction, MitchellSchaeffer)  # the edited class, not the catalog
    u = torch.tensor([[0.2]])
    catalog = MitchellSchaeffer()
    w = torch.ones(1, 1, 1)
    assert not torch.allclose(built.reaction(u, w)[1], catalog(u, w)[1])  # the wider gate
    assert not load_model(spec, dataset, None, TrainingConfig(compile=True)).compile_step


# ---------------------------------------------------------------------------- the tool

needs_sandbox = pytest.mark.skipif(not sandbox_available(), reason="no code sandbox here")


@needs_sandbox
@pytest.mark.anyio
async def test_an_edited_reaction_trains_finetunes_evaluates_and_reloads(home: Path) -> None:
    server = build_server(home / "archive.duckdb", compile_training=False)
    try:
        async with Client(server) as client:
            session_id = await start(client)
            source = (await client.read_resource("catalog://reaction/ms")).contents[0].text
            assert source == catalog_source("ms")
            both = await fails(
                client, "modify_reaction", session_id=session_id, source=WIDER_GATE,
                reaction="ms", candidate_id="c-1",
            )  # fmt: skip
            assert "not both" in both
            await call(
                client, "select_diffusion", session_id=session_id, template="laplacian_global"
            )
            draft = await call(
                client, "modify_reaction", session_id=session_id, source=WIDER_GATE, reaction="ms"
            )
            assert draft["draft"]["reaction"] == "mitchell_schaeffer"
            assert draft["draft"]["diffusion"] == "laplacian_global"  # the draft's diffusion kept
            assert draft["draft"]["operation"] == "modify" and "passed" in draft["message"]
            trained, _ = await train(client, session_id, epochs=1)
            candidate_id = trained["candidate_id"]
            assert trained["status"] == "ok" and trained["operation"] == "modify"
            row = server.service.archive.get_candidate(candidate_id)
            assert row.spec["reaction_source"] == WIDER_GATE and row.code_hash is not None
            shown = await call(client, "get_candidate", candidate_id=candidate_id)
            assert shown["spec"]["reaction_source"] == WIDER_GATE
            # the same edit again is a duplicate; another edit of the candidate trains
            await call(
                client, "select_diffusion", session_id=session_id, template="laplacian_global"
            )
            await call(
                client, "modify_reaction", session_id=session_id, source=WIDER_GATE, reaction="ms"
            )
            assert "duplicate" in await fails(client, "train_candidate", session_id=session_id)
            tuned = await call(
                client, "finetune_candidate", session_id=session_id, candidate_id=candidate_id,
                epochs=1,
            )  # fmt: skip
            assert tuned["status"] == "ok"
            evaluated = await call(
                client, "evaluate_candidate", session_id=session_id,
                candidate_id=tuned["candidate_id"], split="test",
            )  # fmt: skip
            assert 0.0 <= evaluated["mse"] < 1.0
    finally:
        server.close()
    reopened = build_server(home / "archive.duckdb", compile_training=False)
    try:
        async with Client(reopened) as client:
            again = await call(
                client, "evaluate_candidate", session_id=session_id,
                candidate_id=tuned["candidate_id"], split="test",
            )  # fmt: skip
            assert again["mse"] == pytest.approx(evaluated["mse"], rel=1e-5)
            # a new edit of the reloaded candidate: its residual-free reaction, with edited
            # diffusion code too (both sources travel in one spec)
            await call(
                client, "modify_reaction", session_id=session_id,
                source=WIDER_GATE.replace("0.01)", "0.02)"), candidate_id=candidate_id,
            )  # fmt: skip
            template = (await client.read_resource("catalog://diffusion/laplacian_global")).contents
            await call(
                client, "modify_diffusion", session_id=session_id, source=template[0].text,
                template="laplacian_global",
            )  # fmt: skip
            composed, _ = await train(client, session_id, epochs=1)
            spec = reopened.service.archive.get_candidate(composed["candidate_id"]).spec
            assert composed["status"] == "ok" and "0.02)" in spec["reaction_source"]
            assert spec["diffusion_source"] == template[0].text
    finally:
        reopened.close()


@needs_sandbox
@pytest.mark.anyio
async def test_refused_reaction_code_is_archived_and_costs_nothing(client: Client) -> None:
    session_id = await start(client, budget=2)
    hostile = HOSTILE_SNIPPETS["import-not-allowed"] + model(HEALTHY)
    text = await fails(
        client, "modify_reaction", session_id=session_id, source=hostile, reaction="ap"
    )
    assert "refused" in text and "'os'" in text and "modify_reaction again" in text
    nan = model("        return torch.log(u - 2.0) * p['a'], w * 0")
    text = await fails(client, "modify_reaction", session_id=session_id, source=nan, reaction="ap")
    assert "rates-nonfinite" in text and "line 12" in text and "NaN/Inf" in text
    crash = model("        return u.reshape(-1, 3, 7), w")
    text = await fails(
        client, "modify_reaction", session_id=session_id, source=crash, reaction="ap"
    )
    assert "runtime-error" in text and "u.reshape(-1, 3, 7)" in text  # the traceback's line
    rows = await call(
        client, "query_archive", session_id=session_id,
        sql="SELECT status, spec, error FROM candidates ORDER BY created_at",
    )  # fmt: skip
    assert [row[0] for row in rows["rows"]] == ["refused"] * 3
    sources = [json.loads(row[1])["reaction_source"] for row in rows["rows"]]
    assert sources == [hostile, nan, crash]
    summary = json.loads(
        (await client.read_resource(f"session://{session_id}/summary")).contents[0].text
    )
    assert summary["budget_left"] == 2
    assert "'neural' is a network" in await fails(
        client, "modify_reaction", session_id=session_id, source=hostile, reaction="neural"
    )


@needs_sandbox
@pytest.mark.anyio
async def test_an_anonymised_session_edits_reactions_under_aliases(client: Client) -> None:
    session_id = await start(client, anonymise=True, seed=3)
    catalog = await call(client, "list_catalogs", session_id=session_id)
    alias = next(r["name"] for r in catalog["reactions"] if r["state_names"] == ["h"])
    source = (
        (await client.read_resource(f"session://{session_id}/reaction/{alias}")).contents[0].text
    )
    assert not any(real in source.lower().replace("_", "") for real in REAL_NAMES)
    assert f"name = '{alias}'" in source and "class Reaction(ReactionModel)" in source
    assert "not a reaction of this anonymised session" in await fails(
        client, "modify_reaction", session_id=session_id, source=source,
        reaction="mitchell_schaeffer",
    )  # fmt: skip
    with pytest.raises(Exception, match="no reaction"):
        await client.read_resource(f"session://{session_id}/reaction/mitchell_schaeffer")
    edited = source.replace("smooth_step(u - p['v_gate'])", "smooth_step(u - p['v_gate'], 0.01)")
    assert edited != source
    draft = await call(
        client, "modify_reaction", session_id=session_id, source=edited, reaction=alias
    )
    assert draft["draft"]["reaction"] == alias
    assert not any(real in json.dumps(draft).lower() for real in REAL_NAMES)


@needs_sandbox
@pytest.mark.anyio
async def test_an_edit_keeps_the_residual_of_what_it_edits(
    client: Client, server: LeadsServer
) -> None:
    session_id = await start(client)
    await call(
        client, "select_reaction", session_id=session_id, reaction="ms", residual={"hidden": 8}
    )
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    draft = await call(
        client, "modify_reaction", session_id=session_id, source=WIDER_GATE, reaction="ms"
    )
    assert draft["draft"]["reaction_residual"]["hidden"] == 8
    trained, _ = await train(client, session_id, epochs=1)
    assert trained["status"] == "ok" and trained["residual"] is not None
    # select_reaction goes back to the catalog code
    back = await call(client, "select_reaction", session_id=session_id, reaction="ms")
    assert back["draft"]["reaction_residual"] is None
    await call(client, "select_diffusion", session_id=session_id, template="laplacian_global")
    plain, _ = await train(client, session_id, epochs=1)
    assert "reaction_source" not in server.service.archive.get_candidate(plain["candidate_id"]).spec
