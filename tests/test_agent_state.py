"""What the agent observes (``leads_agent.state``): archive rows read back as candidates, the
search state's view of the budget, and verdicts parsed from the server's diagnosis."""

from __future__ import annotations

import json
from typing import get_args

from leads_agent.state import (
    SEARCH_OPERATIONS,
    Candidate,
    SearchState,
    parse_verdict,
    rows_to_dicts,
)

from leads_engine import spec as engine_spec


def _candidate(n: int, operation: str, status: str, val: float | None, reaction: str = "A"):
    return Candidate(
        candidate_id=f"c-{n}",
        operation=operation,
        reaction=reaction,
        diffusion="gcn",
        status=status,
        val_loss=val,
        train_loss=val,
    )


def test_parse_verdict():
    assert parse_verdict("overfitting: val MSE 0.1") == "overfitting"
    assert parse_verdict({"verdict": "good_fit"}) == "good_fit"
    assert parse_verdict(None) is None
    assert parse_verdict(json.dumps({"text": "underfitting: the loss plateaued"})) == (
        "underfitting"
    )


def test_the_search_operations_are_the_engine_s():
    """The client cannot import the engine, so it keeps its own copy of the list; it must be the
    same list, or a resumed session would count its budget differently from the server."""
    assert set(SEARCH_OPERATIONS) <= set(get_args(engine_spec.Operation))
    assert "finetune" not in SEARCH_OPERATIONS
    engine_list = getattr(engine_spec, "SEARCH_OPERATIONS", None)
    if engine_list is not None:
        assert tuple(SEARCH_OPERATIONS) == tuple(engine_list)


def test_a_row_with_its_spec_as_json_becomes_a_candidate():
    spec = {
        "operation": "refine",
        "reaction": "reaction_B",
        "diffusion": "gat",
        "diffusion_hyperparameters": {"hidden": 8},
        "diffusion_source": "class Diffusion: ...",
    }
    row = {
        "candidate_id": "c-9",
        "status": "ok",
        "val_loss": "nan",
        "train_loss": 0.25,
        "parameter_count": 17,
        "spec": json.dumps(spec),
        "diagnosis": {"verdict": "overfitting", "text": "overfitting: gap 40%"},
    }
    candidate = Candidate.from_row(row)
    assert (candidate.operation, candidate.reaction, candidate.diffusion) == (
        "refine",
        "reaction_B",
        "gat",
    )
    assert candidate.val_loss is None and candidate.train_loss == 0.25  # NaN is no loss
    assert candidate.hyperparameters == {"hidden": 8} and candidate.edited
    assert candidate.verdict == "overfitting" and not candidate.ok


def test_rows_to_dicts_reads_both_row_shapes():
    listed = {"columns": ["a", "b"], "rows": [[1, 2], [3, 4]]}
    assert rows_to_dicts(listed) == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert rows_to_dicts({"rows": [{"a": 1}]}) == [{"a": 1}]
    assert rows_to_dicts({}) == []


def test_only_trained_search_candidates_count_and_the_best_is_the_lowest_loss():
    candidates = [
        _candidate(1, "select", "ok", 0.5, reaction="A"),
        _candidate(2, "select", "refused", None),
        _candidate(3, "refine", "pending", None),
        _candidate(4, "finetune", "ok", 0.01, reaction="A"),  # a fine-tuned copy is no step
        _candidate(5, "modify", "unstable", None, reaction="B"),
        _candidate(6, "simplify", "ok", 0.2, reaction="B"),
    ]
    state = SearchState(
        session_id="s-1",
        reactions=["A", "B"],
        templates=["gcn"],
        budget=6,
        step=5,
        candidates=candidates,
    )
    assert [c.candidate_id for c in state.trained()] == ["c-1", "c-5", "c-6"]
    assert state.best().candidate_id == "c-6"
    assert state.best("A").candidate_id == "c-1"
    assert state.get("c-4").operation == "finetune"
    assert state.steps_left == 2
