"""The offline policy beyond the catalog (client/offline_beyond.py): a neural residual and the
anisotropic template once the best catalog structure plateaus below 97% explained variance;
nothing changes on a set the catalog explains."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import SimpleNamespace

from leads_agent.batch import train_arguments
from leads_agent.offline import OfflinePolicy, Plan, plan_step
from leads_agent.offline_beyond import (
    DEFAULT_RESIDUAL,
    RESIDUAL_EPOCHS_FACTOR,
    explained_variance,
)
from leads_agent.state import RESIDUAL_FINETUNE_FACTOR, RESIDUAL_FINETUNE_WARMUP, Candidate
from test_offline import FakeEnv, cand, screened, state


def _explaining(candidate: Candidate, explained: float, extra: str = "") -> Candidate:
    candidate.diagnosis = (
        f"{candidate.verdict}: val MSE {candidate.val_loss:.3g} (best epoch 3), train MSE "
        f"{candidate.val_loss:.3g}, gap +0%, explains {explained:.1%} of the variance, 300 "
        f"parameters; {extra}"
    )
    return candidate


def explored(explained: float, extra: str = "") -> list[Candidate]:
    """Screening, then the diffusion agenda with reaction_B; every fit explains ``explained``."""
    base = screened({"reaction_A": 0.3, "reaction_B": 0.01, "reaction_C": 0.2, "neural": 0.05})
    trained = [
        *base,
        cand(10, "reaction_B", "laplacian_nodewise", 0.008, verdict="good_fit"),
        cand(11, "reaction_B", "gcn", 0.009, verdict="good_fit", hyper={"hidden": 16}),
        cand(12, "reaction_B", "gat", 0.03, verdict="good_fit"),
    ]
    return [_explaining(c, explained, extra) for c in trained]


def test_explained_variance_is_read_from_the_diagnosis():
    (candidate,) = explored(0.853)[:1]
    assert explained_variance(candidate) == 0.853
    assert explained_variance(cand(1, "reaction_A", "gcn", 0.1, verdict="good_fit")) is None


def test_a_plateau_below_97_percent_tries_a_residual_on_the_best_reaction():
    plan = plan_step(state(explored(0.85)))
    assert plan is not None and plan.residual == DEFAULT_RESIDUAL
    assert (plan.reaction, plan.operation, plan.template) == (
        "reaction_B",
        "select",
        "laplacian_nodewise",  # the best physical operator of the reaction
    )
    assert "85.0%" in plan.thought and "residual" in plan.thought
    decision = asyncio.run(OfflinePolicy().next_action(state(explored(0.85)), FakeEnv()))
    reaction, diffusion = decision.calls
    assert reaction.name == "select_reaction"
    assert reaction.arguments["residual"] == DEFAULT_RESIDUAL
    assert reaction.arguments["reaction"] == "reaction_B"
    assert diffusion.arguments["template"] == "laplacian_nodewise"
    # latent state for the memory a catalog model lacks, and a longer training for the
    # network that starts from zero (within the tool's 100 epochs)
    assert DEFAULT_RESIDUAL["latent"] == 2
    assert decision.epochs_factor == RESIDUAL_EPOCHS_FACTOR > 1
    assert decision.epochs_for(3) == 3 * RESIDUAL_EPOCHS_FACTOR
    assert decision.epochs_for(50) == 100


def test_a_set_the_catalog_explains_gets_the_same_plan_as_before():
    """At 99.5% explained nothing beyond the catalog is tried: the plan is the diagnosis rule's
    own, with no residual, exactly as without the explained variance in the text."""
    plan = plan_step(state(explored(0.995)))
    assert plan is not None and plan.residual is None
    without_text = explored(0.995)
    for candidate in without_text:
        candidate.diagnosis = "good_fit: ..."
    assert plan.identity() == plan_step(state(without_text)).identity()


def test_anisotropic_template_follows_and_combines_with_a_helpful_residual():
    search = state(explored(0.85))
    search.templates.append("laplacian_anisotropic")
    search.template_families["laplacian_anisotropic"] = "physical"
    hybrid = cand(13, "reaction_B", "laplacian_nodewise", 0.002, verdict="good_fit")
    hybrid.residual = dict(DEFAULT_RESIDUAL)
    search.candidates.append(_explaining(hybrid, 0.99))
    search.step += 1
    plan = plan_step(search)
    assert (plan.template, plan.residual) == ("laplacian_anisotropic", None)
    plain_aniso = cand(14, "reaction_B", "laplacian_anisotropic", 0.007, verdict="good_fit")
    search.candidates.append(_explaining(plain_aniso, 0.9))
    search.step += 1
    plan = plan_step(search)
    assert (plan.template, plan.residual) == ("laplacian_anisotropic", DEFAULT_RESIDUAL)
    assert "residual helped" in plan.thought
    # the combination starts from both: the residual's reaction and network, then the operator
    assert plan.warm_start == (hybrid.candidate_id, plain_aniso.candidate_id)
    # a guess of this step made while the plain anisotropic candidate trained lacked it: the
    # loop must not keep that guess as this step
    assert plan.identity() != dataclasses.replace(plan, warm_start=plan.warm_start[:1]).identity()
    decision = asyncio.run(OfflinePolicy().next_action(search, FakeEnv()))
    assert decision.warm_start == [hybrid.candidate_id, plain_aniso.candidate_id]
    # full steps: the server warms a warm start's learning rates up; no smaller steps are asked
    run = SimpleNamespace(session_id="s-1", config=SimpleNamespace(epochs=3), policy=None)
    assert "learning_rate_scale" not in train_arguments(run, search, decision)
    assert decision.epochs_for(3) == 3 * RESIDUAL_EPOCHS_FACTOR


def test_a_hybrid_candidate_is_fine_tuned_longer_with_a_warm_up():
    plain = cand(10, "reaction_B", "laplacian_nodewise", 0.008, verdict="good_fit")
    hybrid = cand(11, "reaction_B", "laplacian_nodewise", 0.002, verdict="good_fit")
    hybrid.residual = dict(DEFAULT_RESIDUAL)
    assert plain.finetune_arguments(10) == {"epochs": 10}
    assert hybrid.finetune_arguments(10) == {
        "epochs": 10 * RESIDUAL_FINETUNE_FACTOR,
        "warmup_epochs": RESIDUAL_FINETUNE_WARMUP,
    }
    assert hybrid.finetune_arguments(60)["epochs"] == 100  # the tool's limit


def test_a_tried_anisotropic_template_with_resolved_defaults_is_not_proposed_again():
    """As in the archive: the anisotropic candidate carries its resolved hyper-parameters and
    has become the best catalog structure; the next plan is the combination, not a duplicate."""
    search = state(explored(0.85))
    search.templates.append("laplacian_anisotropic")
    search.template_families["laplacian_anisotropic"] = "physical"
    hybrid = cand(13, "reaction_B", "laplacian_nodewise", 0.004, verdict="underfitting")
    hybrid.residual = dict(DEFAULT_RESIDUAL)
    search.candidates.append(_explaining(hybrid, 0.9))
    resolved = {"conductivity": 1.0, "anisotropy": 1.0}
    aniso = cand(14, "reaction_B", "laplacian_anisotropic", 0.006, hyper=resolved)
    search.candidates.append(_explaining(aniso, 0.88))
    search.step += 2
    plan = plan_step(search)
    assert plan is not None
    assert (plan.template, plan.residual) == ("laplacian_anisotropic", DEFAULT_RESIDUAL)
    combo = cand(15, "reaction_B", "laplacian_anisotropic", 0.003, hyper=resolved)
    combo.residual = dict(DEFAULT_RESIDUAL)
    search.candidates.append(_explaining(combo, 0.93))
    search.step += 1
    plan = plan_step(search)
    # no duplicate select of either anisotropic structure (what follows acts on the diagnosis)
    assert plan is None or plan.operation != "select"


def test_a_diagnosis_pointing_at_the_diffusion_tries_anisotropy_first():
    search = state(explored(0.85, "the catalog may lack the right diffusion (anisotropy?)"))
    search.templates.append("laplacian_anisotropic")
    plan = plan_step(search)
    assert (plan.template, plan.residual) == ("laplacian_anisotropic", None)


def test_no_anisotropic_template_in_the_catalog_means_none_is_proposed():
    search = state(explored(0.85))
    hybrid = cand(13, "reaction_B", "laplacian_nodewise", 0.02, verdict="good_fit")
    hybrid.residual = dict(DEFAULT_RESIDUAL)
    search.candidates.append(_explaining(hybrid, 0.86))
    plan = plan_step(search)
    assert plan is not None and plan.template != "laplacian_anisotropic"
    assert plan.residual is None  # the residual is tried once, then the usual rules go on


def test_a_residual_candidate_is_its_own_structure_and_its_refinements_keep_it():
    hybrid = cand(13, "reaction_B", "laplacian_nodewise", 0.02, verdict="good_fit")
    hybrid.residual = dict(DEFAULT_RESIDUAL)
    plain = Plan("reaction_B", "select", "laplacian_nodewise", {}, "")
    with_residual = Plan("reaction_B", "select", "laplacian_nodewise", {}, "", residual={"a": 1})
    assert plain.key([]) != with_residual.key([])
    refine = Plan("reaction_B", "refine", "laplacian_nodewise", {"conductivity": 2}, "", hybrid)
    assert refine.reaction_residual() == DEFAULT_RESIDUAL
    fresh = Plan("reaction_B", "select", "gcn", {}, "", hybrid)
    assert fresh.reaction_residual() is None


def test_the_archive_row_carries_the_residual():
    spec = {
        "reaction": "reaction_B",
        "diffusion": "laplacian_nodewise",
        "reaction_residual": DEFAULT_RESIDUAL,
    }
    row = {"candidate_id": "c-1", "status": "ok", "spec": json.dumps(spec)}
    candidate = Candidate.from_row(row)
    assert candidate.residual == DEFAULT_RESIDUAL
    assert "neural residual" in candidate.summary()
    spec.pop("reaction_residual")
    assert Candidate.from_row({**row, "spec": json.dumps(spec)}).residual is None


def test_a_failed_anisotropic_try_is_dropped_not_simplified():
    """The template fails on a set without fibres: the policy moves on (no simplify, no retry)."""
    search = state(explored(0.85))
    search.templates.append("laplacian_anisotropic")
    hybrid = cand(13, "reaction_B", "laplacian_nodewise", 0.002, verdict="good_fit")
    hybrid.residual = dict(DEFAULT_RESIDUAL)
    failed = cand(14, "reaction_B", "laplacian_anisotropic", None, status="failed")
    search.candidates += [_explaining(hybrid, 0.99), failed]
    plan = plan_step(search)
    assert plan is not None and plan.template != "laplacian_anisotropic"
    assert plan.operation != "simplify"


def test_a_set_whose_summary_names_no_fibres_never_gets_the_anisotropic_template():
    search = state(explored(0.85, "the catalog may lack the right diffusion (anisotropy?)"))
    search.templates.append("laplacian_anisotropic")
    search.dataset_fibers = False
    plan = plan_step(search)
    assert plan is not None and plan.template != "laplacian_anisotropic"
    assert plan.residual == DEFAULT_RESIDUAL  # the residual is still tried
    search.dataset_fibers = True
    assert plan_step(search).template == "laplacian_anisotropic"


def test_the_agent_reads_the_fibres_from_the_data_set_summary():
    from types import SimpleNamespace

    from leads_agent.agent import SearchRun

    def told(summary: object) -> bool | None:
        run = SimpleNamespace(session_info={"dataset": summary})
        return SearchRun._dataset_fibers(run)  # type: ignore[arg-type]

    assert told({"name": "data-1", "nodes": 10, "fibers": "per node"}) is True
    assert told({"name": "data-1", "nodes": 10}) is False
    assert told("ap") is None  # a resumed session's summary names the data set only
