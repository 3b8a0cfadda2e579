"""A spec is valid when it is built (leads_engine/spec.py): the reaction resolved to its
canonical name with checked hyper-parameters, the diffusion template checked and its
hyper-parameters completed from the catalog, once, in the model's validator."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from leads_engine.diffusion import DiffusionSpecError, template_source
from leads_engine.spec import (
    NEURAL_HYPERPARAMETERS,
    CandidateSpec,
    UnknownReactionError,
    resolve_diffusion,
    resolve_reaction,
)

GCN_DEFAULTS = {"hidden": 16, "layers": 2, "activation": "tanh", "conductivity": 1.0}


def cause(exc: pytest.ExceptionInfo[ValidationError]) -> Exception:
    """The rule's own error behind a spec's ValidationError."""
    (error,) = exc.value.errors()
    return error["ctx"]["error"]


def test_reaction_aliases_resolve_to_catalog_names() -> None:
    assert CandidateSpec(reaction="ap", diffusion="gcn").reaction == "aliev_panfilov"
    assert CandidateSpec(reaction="MS", diffusion="gcn").reaction == "mitchell_schaeffer"
    assert CandidateSpec(reaction="fenton_karma", diffusion="gcn").reaction == "fenton_karma"
    neural = CandidateSpec(
        reaction="neural", reaction_hyperparameters={"hidden": 8}, diffusion="gcn"
    )
    assert neural.reaction == "neural" and neural.reaction_hyperparameters == {"hidden": 8}


def test_diffusion_hyperparameters_are_completed_from_the_catalog() -> None:
    spec = CandidateSpec(reaction="ap", diffusion="gcn")
    assert spec.diffusion_hyperparameters == GCN_DEFAULTS
    wider = CandidateSpec(
        reaction="ap", diffusion="gcn", diffusion_hyperparameters={"conductivity": 2, "layers": 3}
    )
    assert wider.diffusion_hyperparameters == {**GCN_DEFAULTS, "conductivity": 2.0, "layers": 3}
    assert isinstance(wider.diffusion_hyperparameters["conductivity"], float)


@pytest.mark.parametrize(
    ("fields", "kind", "text"),
    [
        ({"reaction": "hodgkin_huxley"}, UnknownReactionError, "ap (aliev_panfilov)"),
        ({"reaction_hyperparameters": {"hidden": 8}}, ValueError, "takes no hyper-parameters"),
        (
            {"reaction": "neural", "reaction_hyperparameters": {"depth": 2}},
            ValueError,
            "unknown hyper-parameter(s) ['depth'] for 'neural'",
        ),
        (
            {"reaction": "neural", "reaction_hyperparameters": {"hidden": 1000}},
            ValueError,
            "invalid hyper-parameters for 'neural'",
        ),
        ({"diffusion": "magic"}, DiffusionSpecError, "known templates"),
        (
            {"diffusion_hyperparameters": {"layers": 9}},
            DiffusionSpecError,
            "out of range [1, 4]",
        ),
        (
            {"diffusion_hyperparameters": {"activation": "cubic"}},
            DiffusionSpecError,
            "choose one of",
        ),
        ({"diffusion_hyperparameters": {"depth": 2}}, DiffusionSpecError, "allowed: hidden"),
        ({"diffusion_hyperparameters": {"hidden": True}}, DiffusionSpecError, "integer"),
    ],
)
def test_a_broken_rule_is_refused_with_its_reason(
    fields: dict, kind: type[Exception], text: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        CandidateSpec(**{"reaction": "ap", "diffusion": "gcn", **fields})
    assert isinstance(cause(exc), kind) and text in str(cause(exc))


def test_edited_code_keeps_its_hyperparameters_and_needs_a_known_template() -> None:
    source = template_source("laplacian_global")
    edited = CandidateSpec(
        reaction="ap",
        diffusion="laplacian_global",
        diffusion_hyperparameters={"alpha": 3},
        diffusion_source=source,
    )
    assert edited.diffusion_hyperparameters == {"alpha": 3}  # not the catalog's names
    assert (
        CandidateSpec(
            reaction="ap", diffusion="laplacian_global", diffusion_source=source
        ).diffusion_hyperparameters
        == {}
    )
    with pytest.raises(ValidationError) as exc:
        CandidateSpec(reaction="ap", diffusion="magic", diffusion_source=source)
    assert isinstance(cause(exc), DiffusionSpecError)


def test_the_rules_serve_a_draft_before_the_spec_exists() -> None:
    assert resolve_reaction("rm") == ("rogers_mcculloch", {})
    assert resolve_reaction("neural", {"layers": 3}) == ("neural", {"layers": 3})
    with pytest.raises(UnknownReactionError, match="or 'neural'"):
        resolve_reaction("reaction_A")
    assert resolve_diffusion("gcn") == GCN_DEFAULTS
    with pytest.raises(DiffusionSpecError):
        resolve_diffusion("gcn", {"layers": 0})
    assert NEURAL_HYPERPARAMETERS == ("hidden", "layers", "n_recovery")


#: specs as the server archived them (real names, hyper-parameters completed at the draft)
ARCHIVED = [
    {
        "reaction": "aliev_panfilov",
        "reaction_parameters": {},
        "reaction_learnable": True,
        "reaction_hyperparameters": {},
        "diffusion": "gat",
        "diffusion_hyperparameters": {
            "hidden": 8,
            "heads": 2,
            "layers": 2,
            "activation": "tanh",
            "conductivity": 1.0,
        },
        "diffusion_source": None,
        "parent_id": None,
        "operation": "select",
        "seed": 0,
    },
    {
        "reaction": "neural",
        "reaction_parameters": {},
        "reaction_learnable": True,
        "reaction_hyperparameters": {"hidden": 16, "layers": 1, "n_recovery": 2},
        "diffusion": "laplacian_global",
        "diffusion_hyperparameters": {"conductivity": 1.5},
        "diffusion_source": None,
        "parent_id": "c-000000000001",
        "operation": "refine",
        "seed": 3,
    },
    {
        "reaction": "mitchell_schaeffer",
        "reaction_parameters": {"tau_in": 0.3},
        "reaction_learnable": True,
        "reaction_hyperparameters": {},
        "diffusion": "laplacian_global",
        "diffusion_hyperparameters": {"conductivity": 1.0},
        "diffusion_source": "edited code\n",
        "parent_id": "c-000000000002",
        "operation": "modify",
        "seed": 0,
    },
    {
        "reaction": "fenton_karma",
        "reaction_parameters": {"tau_d": 0.4},
        "reaction_learnable": True,
        "reaction_hyperparameters": {},
        "diffusion": "laplacian_nodewise",
        "diffusion_hyperparameters": {"conductivity": 1.0},
        "diffusion_source": None,
        "parent_id": "c-000000000003",
        "operation": "finetune",
        "seed": 1,
    },
]


@pytest.mark.parametrize("stored", ARCHIVED, ids=[s["operation"] for s in ARCHIVED])
def test_every_archived_spec_loads_unchanged(stored: dict) -> None:
    spec = CandidateSpec.model_validate(stored)
    assert spec.model_dump() == stored
    assert CandidateSpec.model_validate_json(spec.model_dump_json()) == spec


def test_a_spec_stays_frozen_and_closed() -> None:
    spec = CandidateSpec(reaction="ap", diffusion="gcn")
    with pytest.raises(ValidationError):
        spec.seed = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        CandidateSpec(reaction="ap", diffusion="gcn", colour="red")  # type: ignore[call-arg]
    assert CandidateSpec.model_validate(spec) is spec
