"""The offline policy: a rule-based structure search that reads the archive like an agent.

Decision rules, in order (each step sets up exactly one candidate):

1. **Screen reactions.** While some reaction has not been tried with the screening diffusion
   (``laplacian_global``: one parameter, cheap and stable), try the next one. Screening costs at
   most ``budget - 2`` steps so that the diffusion gets at least two (all reactions when the
   budget allows). Every reaction is compared under the same diffusion, so the lowest
   validation loss names the best reaction; on synthetic data that is the true one.
2. **Keep the best reaction**: the reaction of the screening candidate with the lowest
   validation loss (ties: the earlier one).
3. **Handle instability first.** If the last candidate diverged (``unstable``/``failed``):
   a neural template without the soft gain gets the ``soft_gain`` code edit; otherwise it is
   simplified (half the width, one layer fewer, half the initial conductivity).
4. **Explore the diffusion agenda** with the best reaction: ``laplacian_nodewise`` (the most
   expressive physical operator: per-node conductivity), then a graph neural template
   (``gcn``, then ``gat``), each tried once.
5. **Act on the diagnosis of the best candidate** (server verdict, else the curves):
   * *over-fitting* (verdict, or a validation/training gap above 50%): the ``gated_residual``
     edit (pulls a neural operator towards the FE conductance) if not yet applied, else
     ``simplify`` (less capacity);
   * *under-fitting* (verdict, or a plateaued validation curve): ``refine`` with more
     capacity (double the width, one layer more, within the catalog ranges); a physical
     operator that cannot grow moves to the next untried neural template;
   * *good fit*: try the untried code edits (``gated_residual``, ``layer_norm``), then the
     remaining neural templates, then a small refinement.
   Before acting on the diagnosis, when the best catalog structure explains less than 97% of
   the variance (a plateau well above the noise), the steps of :mod:`.offline_beyond`: a neural
   residual on the best reaction, the anisotropic template when the catalog has it.
   The diagnosis and the fallback are not tried once the search has converged
   (:mod:`.convergence`: ``patience`` steps after the screening without a better validation
   loss): the policy stops, and the run fine-tunes the best.
6. Never repeat a structure already in the archive (same reaction, template,
   hyper-parameters and edits): fall through to the next rule instead.

The thoughts are plain text in the same trace format an LLM writes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .convergence import convergence_thought
from .edits import EDITS, EditError, apply_edit
from .offline_beyond import beyond_plan, is_refused_anisotropy
from .plan import Plan, c_edits, detect_edits, structure_key
from .policy import ToolEnv, Usage
from .state import NOT_TRAINED, Candidate, Decision, SearchState, ToolCall

__all__ = ["INDEPENDENT_RULES", "RULES", "OfflinePolicy", "Plan", "detect_edits", "plan_step"]

SCREEN_DIFFUSION = "laplacian_global"
DIFFUSION_AGENDA = ("laplacian_nodewise", "gcn", "gat")
NEURAL_ORDER = ("gcn", "gat", "graphsage", "edge_mlp", "chebyshev", "gatv2", "graph_transformer")
PHYSICAL = ("mean_aggregation", "laplacian_global", "laplacian_nodewise")
OVERFIT_GAP = 0.5
#: The rules in the order they are tried (rule 6, no repeats, applies inside each).
RULES = ("screening", "instability", "agenda", "beyond", "diagnosis", "fallback")
#: Rules whose successive plans do not depend on one another's results: with a placeholder (a
#: candidate still training) for each earlier plan, the next plan is the one the rules make once
#: it has trained (for the agenda: unless it ends unstable, which rule 3 handles first), so these
#: steps may be decided together and trained at once (:mod:`.batch`).
INDEPENDENT_RULES = ("screening", "agenda")
CAPACITY_KEYS = ("hidden", "layers", "mlp_layers", "heads", "K")


def _is_neural(state: SearchState, template: str) -> bool:
    family = state.template_families.get(template)
    return family == "neural" if family else template not in PHYSICAL


def _fmt(loss: float | None) -> str:
    return f"{loss:.4g}" if loss is not None else "n/a"


def _range(state: SearchState, template: str, name: str) -> tuple[float, float] | None:
    info = state.hyperparameter_ranges.get(template, {}).get(name)
    if not isinstance(info, dict) or "min" not in info or "max" not in info:
        return None
    return float(info["min"]), float(info["max"])


def _default(state: SearchState, template: str, name: str) -> Any:
    info = state.hyperparameter_ranges.get(template, {}).get(name)
    return info.get("default") if isinstance(info, dict) else None


def _current(state: SearchState, candidate: Candidate, name: str) -> Any:
    value = candidate.hyperparameters.get(name)
    return value if value is not None else _default(state, candidate.diffusion, name)


def _clip(state: SearchState, template: str, name: str, value: float) -> float:
    bounds = _range(state, template, name)
    if bounds is None:
        return value
    return min(max(value, bounds[0]), bounds[1])


def grow(state: SearchState, candidate: Candidate) -> dict[str, Any]:
    """More capacity: double the width, one layer more (within the catalog ranges)."""
    changes: dict[str, Any] = {}
    for name in ("hidden", "layers", "mlp_layers", "K"):
        value = _current(state, candidate, name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        target = value * 2 if name == "hidden" else value + 1
        new = int(_clip(state, candidate.diffusion, name, target))
        if new != value:
            changes[name] = new
    return changes


def shrink(state: SearchState, candidate: Candidate, conductivity: bool = False) -> dict[str, Any]:
    """Less capacity: half the width, one layer fewer; optionally half the conductivity."""
    changes: dict[str, Any] = {}
    for name in ("hidden", "layers", "mlp_layers", "heads", "K"):
        value = _current(state, candidate, name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        target = value // 2 if name in ("hidden", "heads") else value - 1
        new = int(_clip(state, candidate.diffusion, name, target))
        if new != value:
            changes[name] = new
    if conductivity:
        value = _current(state, candidate, "conductivity")
        if isinstance(value, int | float):
            new_c = _clip(state, candidate.diffusion, "conductivity", float(value) / 2)
            if new_c != value:
                changes["conductivity"] = round(new_c, 6)
    return changes


class _Planner:
    """The rules of the module docstring over one :class:`SearchState`."""

    def __init__(self, state: SearchState, refused: frozenset[str] = frozenset()) -> None:
        self.state = state
        self.trained = state.trained()
        # refused code edits are in the archive too: do not propose them again
        archived = self.trained + [c for c in state.candidates if c.status == "refused"]
        self.seen = {
            structure_key(c.reaction, c.diffusion, dict(c.hyperparameters), c_edits(c), c.residual)
            for c in archived
        }
        self.refused = refused
        #: why :meth:`plan` found nothing when the search has converged (:mod:`.convergence`)
        self.stop_reason: str | None = None

    def new(self, plan: Plan, edits: list[str]) -> bool:
        return plan.key(edits) not in self.seen and plan.identity() not in self.refused

    # ------------------------------------------------------------------ screening

    def screening_diffusion(self) -> str:
        return self.state.fixed_diffusion or SCREEN_DIFFUSION

    def screened(self) -> list[Candidate]:
        diffusion = self.screening_diffusion()
        return [
            c
            for c in self.trained
            if c.diffusion == diffusion
            and c.operation == "select"
            and not c.edited
            and not c.residual
            and c.reaction in self.state.reactions
        ]

    def screening_quota(self) -> int:
        reactions = len(self.state.reactions)
        if self.state.fixed_diffusion or len(self.state.reactions) == 1:
            return reactions
        return min(reactions, max(1, self.state.budget - 2))

    def best_reaction(self) -> tuple[str, Candidate | None]:
        if self.state.fixed_reaction:
            return self.state.fixed_reaction, self.state.best(self.state.fixed_reaction)
        screened = [c for c in self.screened() if c.ok]
        if screened:
            best = min(screened, key=lambda c: c.val_loss or math.inf)
            return best.reaction, best
        best_any = self.state.best()
        if best_any:
            return best_any.reaction, best_any
        return self.state.reactions[0], None

    def screening_plan(self) -> Plan | None:
        done = {c.reaction for c in self.screened()}
        if len(done) >= self.screening_quota():
            return None
        todo = [r for r in self.state.reactions if r not in done]
        if not todo:
            return None
        reaction = todo[0]
        diffusion = self.screening_diffusion()
        ranking = sorted((c for c in self.screened() if c.ok), key=lambda c: c.val_loss or 0)
        so_far = (
            "; so far " + ", ".join(f"{c.reaction} {_fmt(c.val_loss)}" for c in ranking)
            if ranking
            else ""
        )
        thought = (
            f"Screening reactions under one fixed, cheap diffusion ({diffusion}) so that their "
            f"validation losses are comparable: {len(done)} of {self.screening_quota()} "
            f"screened{so_far}. Next: {reaction} + {diffusion}."
        )
        return Plan(reaction, "select", diffusion, {}, thought)

    # ------------------------------------------------------------------ after screening

    def last(self) -> Candidate | None:
        return self.trained[-1] if self.trained else None

    def instability_plan(self, reaction: str) -> Plan | None:
        last = self.last()
        if last is None or last.status not in ("unstable", "failed"):
            return None
        if is_refused_anisotropy(last):  # a set without fibres: nothing to soften
            return None
        edits = c_edits(last)
        why = f"The last candidate ({last.reaction} + {last.diffusion}) was {last.status}"
        if last.diagnosis:
            why += f" ({last.diagnosis[:160]})"
        if _is_neural(self.state, last.diffusion) and "soft_gain" not in edits:
            plan = Plan(
                last.reaction,
                "modify",
                last.diffusion,
                dict(last.hyperparameters),
                f"{why}. Its conductance can swing too far: apply the soft_gain edit "
                "(g * tanh(.), smaller initial gain) to bound it.",
                parent=last,
                edit="soft_gain",
            )
            if self.new(plan, [*edits, "soft_gain"]):
                return plan
        changes = shrink(self.state, last, conductivity=True)
        if changes:
            hyper = {**last.hyperparameters, **changes}
            plan = Plan(
                last.reaction,
                "simplify",
                last.diffusion,
                hyper,
                f"{why}. Simplify it: {json.dumps(changes)} (less capacity, softer initial "
                "conduction) to get a stable integration.",
                parent=last,
            )
            if self.new(plan, edits):
                return plan
        return None

    def agenda_plan(self, reaction: str) -> Plan | None:
        if self.state.fixed_diffusion:
            return None
        tried = {c.diffusion for c in self.trained if c.reaction == reaction}
        for template in DIFFUSION_AGENDA:
            if template in tried or template not in self.state.templates:
                continue
            reason = (
                "the most expressive physical operator (a learnable conductivity per node, "
                "which can represent a scar)"
                if template == "laplacian_nodewise"
                else "a graph network that predicts edge conductances from the state"
            )
            best = self.state.best(reaction)
            thought = (
                f"Reaction {reaction} is the best of the screening"
                f"{f' (val {_fmt(best.val_loss)})' if best else ''}. Explore the diffusion "
                f"structure next: {template}, {reason}."
            )
            return Plan(reaction, "select", template, {}, thought)
        return None

    def diagnosis_plan(self, reaction: str) -> Plan | None:
        best = self.state.best(reaction) or self.state.best()
        if best is None:
            return None
        verdict = best.verdict
        gap = best.gap()
        edits = c_edits(best)
        neural = _is_neural(self.state, best.diffusion)
        head = (
            f"Best so far: {best.candidate_id} ({best.reaction} + {best.diffusion}"
            f"{' with edits ' + '+'.join(edits) if edits else ''}), val {_fmt(best.val_loss)}, "
            f"verdict {verdict or 'n/a'}"
            f"{f', gap {gap:+.0%}' if gap is not None else ''}."
        )
        overfit = verdict == "overfitting" or (gap is not None and gap > OVERFIT_GAP)
        underfit = verdict == "underfitting" or (verdict is None and best.plateaued())
        options: list[Plan] = []
        if overfit:
            if neural and "gated_residual" not in edits and not self.state.fixed_diffusion:
                options.append(
                    self._edit(
                        best,
                        "gated_residual",
                        f"{head} It over-fits: tie the "
                        "learned conductance to the FE one with a gated "
                        "residual mix.",
                    )
                )
            changes = shrink(self.state, best)
            if changes:
                options.append(
                    Plan(
                        best.reaction,
                        "simplify",
                        best.diffusion,
                        {**best.hyperparameters, **changes},
                        f"{head} It over-fits: simplify ({json.dumps(changes)}).",
                        parent=best,
                    )
                )
            if neural and not self.state.fixed_diffusion:
                options.append(
                    Plan(
                        best.reaction,
                        "select",
                        "laplacian_nodewise",
                        {},
                        f"{head} It over-fits: fall back to the physical "
                        "laplacian_nodewise operator.",
                        parent=None,
                    )
                )
        elif underfit:
            changes = grow(self.state, best)
            if changes:
                options.append(
                    Plan(
                        best.reaction,
                        "refine",
                        best.diffusion,
                        {**best.hyperparameters, **changes},
                        f"{head} It under-fits: refine with more capacity ({json.dumps(changes)}).",
                        parent=best,
                    )
                )
            options += self._next_neural(best, f"{head} It under-fits and cannot grow: try")
            options += self._edits(best, head + " It under-fits: try the code edit")
        else:
            options += self._edits(best, head + " It fits well: try the code edit")
            options += self._next_neural(best, f"{head} Compare another graph network:")
            changes = grow(self.state, best)
            if changes:
                options.append(
                    Plan(
                        best.reaction,
                        "refine",
                        best.diffusion,
                        {**best.hyperparameters, **changes},
                        f"{head} Try a little more capacity ({json.dumps(changes)}).",
                        parent=best,
                    )
                )
        for plan in options:
            if plan.operation == "modify":
                plan_edits = [*edits, plan.edit or ""]
            elif plan.operation in ("refine", "simplify"):
                plan_edits = edits
            else:
                plan_edits = []
            if self.new(plan, plan_edits):
                return plan
        return None

    def beyond_catalog_plan(self, reaction: str) -> Plan | None:
        """The first new step of :func:`~.offline_beyond.beyond_plan` (a plateau only)."""
        return next((p for p in beyond_plan(self.state, reaction, Plan) if self.new(p, [])), None)

    def _edit(self, parent: Candidate, edit: str, thought: str) -> Plan:
        return Plan(
            parent.reaction,
            "modify",
            parent.diffusion,
            dict(parent.hyperparameters),
            f"{thought} ({EDITS[edit].purpose})",
            parent=parent,
            edit=edit,
        )

    def _edits(self, best: Candidate, prefix: str) -> list[Plan]:
        if not _is_neural(self.state, best.diffusion) or self.state.fixed_diffusion:
            return []
        done = c_edits(best)
        return [
            self._edit(best, name, f"{prefix} {name}.")
            for name in ("gated_residual", "layer_norm")
            if name not in done
        ]

    def _next_neural(self, best: Candidate, prefix: str) -> list[Plan]:
        if self.state.fixed_diffusion:
            return []
        tried = {c.diffusion for c in self.trained if c.reaction == best.reaction}
        return [
            Plan(best.reaction, "select", name, {}, f"{prefix} {name}.")
            for name in NEURAL_ORDER
            if name in self.state.templates and name not in tried
        ]

    def fallback(self, reaction: str) -> Plan | None:
        best = self.state.best(reaction) or self.state.best()
        if self.state.fixed_diffusion and best is None:
            return None
        if best is not None:
            for factor in (2.0, 0.5, 4.0, 0.25):
                value = _current(self.state, best, "conductivity")
                if not isinstance(value, int | float):
                    break
                hyper = {
                    **best.hyperparameters,
                    "conductivity": round(
                        _clip(self.state, best.diffusion, "conductivity", value * factor), 6
                    ),
                }
                plan = Plan(
                    best.reaction,
                    "refine",
                    best.diffusion,
                    hyper,
                    f"Every planned structure is in the archive; refine the best "
                    f"({best.candidate_id}) from another initial conductivity "
                    f"({hyper['conductivity']}).",
                    parent=best,
                )
                if self.new(plan, c_edits(best)):
                    return plan
        return None

    def plan(self) -> Plan | None:
        screening = self.screening_plan()
        if screening:
            screening.rule = "screening"
            return screening
        reaction, _ = self.best_reaction()
        rules = {
            "instability": self.instability_plan,
            "agenda": self.agenda_plan,
            "beyond": self.beyond_catalog_plan,
            "diagnosis": self.diagnosis_plan,
            "fallback": self.fallback,
        }
        for name, rule in rules.items():
            if name == "diagnosis":  # the open-ended rules stop when the search has converged
                self.stop_reason = convergence_thought(
                    self.state, {c.candidate_id for c in self.screened()}
                )
                if self.stop_reason is not None:
                    return None
            plan = rule(reaction)
            if plan is not None:
                plan.rule = name
                return plan
        return None


def plan_step(state: SearchState, refused: frozenset[str] = frozenset()) -> Plan | None:
    """The rules' decision for this state (``None``: nothing sensible is left to try).

    ``refused`` holds the :meth:`Plan.identity` of actions the server refused earlier in the
    run; they are not proposed again.
    """
    return _Planner(state, refused).plan()


class OfflinePolicy:
    """Rule-based policy (no LLM): see the module docstring for its rules."""

    name = "offline"

    def __init__(self) -> None:
        self.usage = Usage(model="offline")
        self.refused: set[str] = set()  # actions the server refused during this run
        self._last_plan: Plan | None = None

    async def _source_for(self, plan: Plan, env: ToolEnv) -> str:
        parent = plan.parent
        code = parent.code if parent else None
        if not code and parent is not None and env.has_tool("get_candidate"):
            record = await env.call("get_candidate", {"candidate_id": parent.candidate_id})
            code = record.as_dict().get("code") if record.ok else None
        if not code:
            source = await env.read_resource(f"catalog://diffusion/{plan.template}")
            code = source.decode() if isinstance(source, bytes) else source
        return code

    async def next_action(self, state: SearchState, env: ToolEnv) -> Decision:
        """Plan with the rules; materialise a code edit from the template's source."""
        planner = _Planner(state, frozenset(self.refused))
        plan = planner.plan()
        self._last_plan = plan
        if plan is None:
            return Decision(
                planner.stop_reason
                or "Nothing new is left to try within the rules; stop the search.",
                stop=True,
            )
        reaction_args: dict[str, Any] = {"session_id": state.session_id, "reaction": plan.reaction}
        residual = plan.reaction_residual()
        if residual is not None:
            reaction_args["residual"] = residual
        calls = [ToolCall("select_reaction", reaction_args)]
        args: dict[str, Any] = {"session_id": state.session_id}
        if plan.operation == "select":
            args |= {"template": plan.template, "hyperparameters": plan.hyperparameters}
            calls.append(ToolCall("select_diffusion", args))
        elif plan.operation in ("refine", "simplify"):
            assert plan.parent is not None
            args |= {
                "candidate_id": plan.parent.candidate_id,
                "hyperparameters": plan.hyperparameters,
            }
            calls.append(ToolCall(f"{plan.operation}_diffusion", args))
        else:
            assert plan.parent is not None and plan.edit is not None
            base = await self._source_for(plan, env)
            try:
                source = apply_edit(plan.edit, base)
            except EditError as exc:
                return Decision(f"{plan.thought} The edit does not apply ({exc}); stop.", stop=True)
            # the edit applies to the parent candidate's code (its template is implied)
            args |= {"candidate_id": plan.parent.candidate_id, "source": source}
            calls.append(ToolCall("modify_diffusion", args))
        return Decision(
            thought=plan.thought,
            calls=calls,
            epochs_factor=plan.epochs_factor,
            warm_start=list(plan.warm_start),
        )

    def record_outcome(self, state: SearchState, decision: Decision, observation: str) -> None:
        """The rules re-read the archive each step; only refused actions are remembered."""
        if self._last_plan is not None and NOT_TRAINED in observation:
            self.refused.add(self._last_plan.identity())
