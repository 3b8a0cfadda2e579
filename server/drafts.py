"""Drafts: the six operations that assemble the candidate ``train_candidate`` trains.

``select_reaction``, ``select_diffusion``, ``refine_diffusion``, ``modify_diffusion``,
``modify_reaction`` and ``simplify_diffusion`` each decide one :class:`DraftChange`;
:meth:`Drafts._draft` does what they share: load the session, resolve the trained parent, apply
the change to the draft, record the step and reply with the draft (and its parameter count when
it is known). A draft's parts are checked by the spec's own rules; the whole spec is checked
once, when :meth:`Drafts.complete` builds it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from pydantic import ValidationError

from leads_engine.diffusion import list_templates, template_info
from leads_engine.reactions import NeuralReaction
from leads_engine.spec import (
    SEARCH_OPERATIONS,
    CandidateSpec,
    ResidualSpec,
    UnknownReactionError,
    resolve_reaction,
)

from .catalog_view import reaction_names
from .errors import DiscoveryError, checked_diffusion, checked_spec
from .inputs import (
    ModifyDiffusion,
    ModifyReaction,
    RefineDiffusion,
    SelectDiffusion,
    SelectReaction,
    SimplifyDiffusion,
)
from .models import DraftResult
from .reads import Parent, Reads
from .runs import Runs, require_sandbox
from .state import DiscoverySession, Draft, Sessions


@dataclass(frozen=True)
class DraftChange:
    """What one draft operation does: the draft fields it sets (real names), the step it
    archives (the action's arguments and a text, as the session shows them) and its reply;
    ``parameter_count`` when the operation counted."""

    fields: dict[str, Any]
    action: dict[str, Any]
    note: str
    message: str
    parameter_count: int | None = None


Decide = Callable[[DiscoverySession, Parent | None], Awaitable[DraftChange]]


class Drafts:
    """The draft operations of the sessions of one archive."""

    def __init__(self, sessions: Sessions, reads: Reads, runs: Runs) -> None:
        self.sessions = sessions
        self.reads = reads
        self.runs = runs

    async def _draft(
        self, tool: str, session_id: str, parent_id: str | None, decide: Decide
    ) -> DraftResult:
        """Load the session and the trained parent, apply the change ``decide`` makes, record
        it as a step of ``tool`` and reply with the new draft."""
        session = await self.sessions.get(session_id)
        parent = None if parent_id is None else self.reads.trained_parent(parent_id, session)
        change = await decide(session, parent)
        session.draft = replace(session.draft, **change.fields)
        self.sessions.save_draft(session)
        self.sessions.record_step(session, {"tool": tool, **change.action}, change.note)
        count = change.parameter_count
        if count is None:
            count = await self._known_count(session)
        return DraftResult(
            session_id=session.session_id,
            draft=session.draft_view(count),
            budget_left=session.budget_left,
            message=change.message,
        )

    async def _known_count(self, session: DiscoverySession) -> int | None:
        """The draft's parameter count when it is complete catalog code, else None."""
        draft = session.draft
        if draft.diffusion_source is not None or draft.reaction_source is not None:
            return None
        try:
            spec = self.complete(session)
            if spec.has_edited_code:
                return None
            return await self.runs.parameter_count(spec, session)
        except DiscoveryError:
            return None

    # ------------------------------------------------------------------ the five operations

    async def select_reaction(self, request: SelectReaction) -> DraftResult:
        """Set the draft's reaction model, optionally with a neural residual (hybrid reaction)."""

        async def decide(session: DiscoverySession, parent: Parent | None) -> DraftChange:
            real, hp = _resolved_reaction(session, request.reaction, request.hyperparameters)
            residual = _checked_residual(real, request.residual)
            shown = session.aliases.show(real)
            next_step = (
                "select a diffusion next"
                if session.draft.diffusion is None
                else "call train_candidate to train the draft"
            )
            action: dict[str, Any] = {"reaction": shown, "hyperparameters": hp}
            what = shown
            if residual is not None:
                action["residual"] = residual
                what = (
                    f"{shown} + neural residual (hidden {residual['hidden']}, layers "
                    f"{residual['layers']}, penalty {residual['penalty']:g})"
                )
            return DraftChange(
                fields={
                    "reaction": real,
                    "reaction_hyperparameters": hp,
                    "reaction_residual": residual,
                    "reaction_source": None,  # the catalog code again
                },
                action=action,
                note=f"draft reaction {what}",
                message=f"reaction {what} selected; {next_step}",
            )

        return await self._draft("select_reaction", request.session_id, None, decide)

    async def select_diffusion(self, request: SelectDiffusion) -> DraftResult:
        """Set the draft's diffusion to a catalog template (operation ``select``)."""
        template = request.template

        async def decide(session: DiscoverySession, parent: Parent | None) -> DraftChange:
            resolved = checked_diffusion(template, request.hyperparameters)
            _require_fibers(template, session)
            next_step = (
                "call train_candidate"
                if session.draft.reaction is not None or session.last_candidate_id
                else "select a reaction next"
            )
            return DraftChange(
                fields=_diffusion(template, resolved, None, None, "select"),
                action={"template": template, "hyperparameters": resolved},
                note=f"draft diffusion {template} {resolved}",
                message=f"diffusion {template} selected; {next_step}",
            )

        return await self._draft("select_diffusion", request.session_id, None, decide)

    async def refine_diffusion(self, request: RefineDiffusion) -> DraftResult:
        """Draft = the candidate with changed diffusion hyper-parameters (operation ``refine``)."""
        candidate_id = request.candidate_id

        async def decide(session: DiscoverySession, parent: Parent | None) -> DraftChange:
            assert parent is not None
            spec = parent.spec
            if not request.hyperparameters:
                raise DiscoveryError(
                    "refine_diffusion needs at least one hyper-parameter to change; the "
                    f"candidate has {spec.diffusion_hyperparameters}"
                )
            merged = {**spec.diffusion_hyperparameters, **request.hyperparameters}
            resolved = checked_diffusion(spec.diffusion, merged)
            if resolved == spec.diffusion_hyperparameters:  # complete since it was loaded
                raise DiscoveryError(
                    f"refine_diffusion changes nothing: {candidate_id} already has {resolved}; "
                    "pass a different value"
                )
            return DraftChange(
                fields=_diffusion(
                    spec.diffusion, resolved, spec.diffusion_source, candidate_id, "refine"
                ),
                action={"candidate_id": candidate_id, "hyperparameters": resolved},
                note=f"draft refines {candidate_id}: {spec.diffusion} {resolved}",
                message=f"refined {spec.diffusion} of {candidate_id}; call train_candidate",
            )

        return await self._draft("refine_diffusion", request.session_id, candidate_id, decide)

    def _refuse_edit(
        self,
        session: DiscoverySession,
        tool: str,
        edit: dict[str, Any],
        refused: dict[str, Any],
        message: str,
    ) -> NoReturn:
        """Archive refused edited code as a 'refused' candidate (no budget used), record the
        step, and answer the caller with the reason."""
        refused_id = self.runs.record_refusal(session, refused, message)
        self.sessions.record_step(
            session, {"tool": tool, **edit}, f"refused ({refused_id}): {message}"
        )
        what = "reaction code" if tool == "modify_reaction" else "code"
        raise DiscoveryError(
            f"the edited {what} was refused (archived as {refused_id}, no budget used): "
            f"{message}\nFix the code and call {tool} again."
        )

    async def modify_diffusion(self, request: ModifyDiffusion) -> DraftResult:
        """Draft = edited code of a candidate's or a template's diffusion (operation
        ``modify``), after the sandbox accepted it with the hyper-parameters it will be trained
        with; a refusal is archived as ``refused``."""
        candidate_id, template, source = request.candidate_id, request.template, request.source
        one_thing = (candidate_id is None) != (template is None)
        edit = {"candidate_id": candidate_id, "template": template}

        async def decide(session: DiscoverySession, parent: Parent | None) -> DraftChange:
            if not one_thing:
                raise DiscoveryError(
                    "modify_diffusion edits one thing: pass either candidate_id (edit that "
                    "candidate's diffusion code) or template (edit a catalog template), not both"
                )
            if parent is not None:
                base, hp = parent.spec.diffusion, dict(parent.spec.diffusion_hyperparameters)
                reaction = session.draft.reaction or parent.spec.reaction
            else:
                assert template is not None
                base, hp = template, checked_diffusion(template, None)
                reaction = session.draft.reaction
            report = await self.runs.check_edit(source, hp)
            if not report.accepted:
                refused = {
                    "reaction": reaction,
                    "diffusion": base,
                    "diffusion_hyperparameters": hp,
                    "diffusion_source": source,
                    "parent_id": candidate_id,
                    "operation": "modify",
                    "seed": session.seed,
                }
                self._refuse_edit(session, "modify_diffusion", edit, refused, report.message)
            return DraftChange(
                fields=_diffusion(base, hp, source, candidate_id, "modify"),
                action=edit,
                note=f"draft modifies {candidate_id or template}: accepted",
                message="the edited code passed the sandbox checks; call train_candidate",
            )

        return await self._draft(
            "modify_diffusion", request.session_id, candidate_id if one_thing else None, decide
        )

    async def modify_reaction(self, request: ModifyReaction) -> DraftResult:
        """Draft = edited code of a trained candidate's or a catalog reaction model (operation
        ``modify``) once the sandbox accepted it; the draft keeps its diffusion, and the edit
        the residual of what it edits (the candidate's, or the draft's). A refusal is archived
        as ``refused``."""
        candidate_id, shown, source = request.candidate_id, request.reaction, request.source
        one_thing = (candidate_id is None) != (shown is None)
        edit = {"candidate_id": candidate_id, "reaction": shown}

        async def decide(session: DiscoverySession, parent: Parent | None) -> DraftChange:
            if not one_thing:
                raise DiscoveryError(
                    "modify_reaction edits one thing: pass either candidate_id (edit that "
                    "candidate's reaction code) or reaction (edit a catalog reaction's code), "
                    "not both"
                )
            draft = session.draft
            if parent is not None:
                real = parent.spec.reaction
                residual = parent.spec.reaction_residual
                kept = None if residual is None else residual.model_dump()
                diffusion = draft.diffusion or parent.spec.diffusion
            else:
                assert shown is not None
                real, _ = _resolved_reaction(session, shown, None)
                kept, diffusion = draft.reaction_residual, draft.diffusion
            if real == NeuralReaction.name:
                raise DiscoveryError(
                    "'neural' is a network, not code to edit: edit a catalog reaction (or a "
                    "candidate built on one), or add a residual with select_reaction"
                )
            report = await self.runs.check_reaction_edit(source)
            if not report.accepted:
                refused = {
                    "reaction": real,
                    "reaction_source": source,
                    "diffusion": diffusion,
                    "parent_id": candidate_id,
                    "operation": "modify",
                    "seed": session.seed,
                }
                self._refuse_edit(session, "modify_reaction", edit, refused, report.message)
            next_step = (
                "call train_candidate"
                if diffusion is not None or session.last_candidate_id
                else "select a diffusion next"
            )
            return DraftChange(
                fields={
                    "reaction": real,
                    "reaction_hyperparameters": {},
                    "reaction_residual": kept,
                    "reaction_source": source,
                    "parent_id": candidate_id if parent is not None else draft.parent_id,
                    "operation": "modify",
                },
                action=edit,
                note=f"draft modifies the reaction of {candidate_id or shown}: accepted",
                message=f"the edited reaction code passed the sandbox checks ({report.message});"
                f" {next_step}",
            )

        return await self._draft(
            "modify_reaction", request.session_id, candidate_id if one_thing else None, decide
        )

    async def simplify_diffusion(self, request: SimplifyDiffusion) -> DraftResult:
        """Draft = a variant of the candidate with strictly fewer trainable parameters
        (another template, or the same template with smaller hyper-parameters)."""
        candidate_id, template = request.candidate_id, request.template

        async def decide(session: DiscoverySession, parent: Parent | None) -> DraftChange:
            assert parent is not None
            spec = parent.spec
            if template is None and not request.hyperparameters:
                raise DiscoveryError(
                    "simplify_diffusion needs a simpler template or smaller hyper-parameters"
                )
            if template is None or template == spec.diffusion:
                base, source = spec.diffusion, spec.diffusion_source
                merged = {**spec.diffusion_hyperparameters, **(request.hyperparameters or {})}
            else:
                base, merged, source = template, dict(request.hyperparameters or {}), None
            draft = session.draft
            variant = checked_spec(
                {
                    "reaction": draft.reaction or spec.reaction,
                    "reaction_hyperparameters": (
                        draft.reaction_hyperparameters
                        if draft.reaction
                        else spec.reaction_hyperparameters
                    ),
                    "reaction_residual": (
                        draft.reaction_residual if draft.reaction else spec.reaction_residual
                    ),
                    "reaction_source": (
                        draft.reaction_source if draft.reaction else spec.reaction_source
                    ),
                    "diffusion": base,
                    # the spec completes catalog code's hyper-parameters; edited code keeps
                    # them as given, so they are checked against its template here
                    "diffusion_hyperparameters": (
                        merged if source is None else checked_diffusion(base, merged)
                    ),
                    "diffusion_source": source,
                    "parent_id": candidate_id,
                    "operation": "simplify",
                    "seed": session.seed,
                }
            )
            resolved = variant.diffusion_hyperparameters
            count = await self.runs.parameter_count(variant, session)
            parent_count = parent.parameter_count
            if parent_count is None:
                parent_count = await self.runs.parameter_count(spec, session)
            if count >= parent_count:
                raise DiscoveryError(
                    f"not a simplification: {base} {resolved} has {count} trainable parameters, "
                    f"the parent {candidate_id} has {parent_count}; choose a template or "
                    "hyper-parameters with fewer parameters"
                )
            return DraftChange(
                fields=_diffusion(base, resolved, source, candidate_id, "simplify"),
                action={
                    "candidate_id": candidate_id,
                    "template": base,
                    "hyperparameters": resolved,
                },
                note=f"draft simplifies {candidate_id}: {count} < {parent_count} parameters",
                message=f"{count} parameters instead of {parent_count}; call train_candidate",
                parameter_count=count,
            )

        return await self._draft("simplify_diffusion", request.session_id, candidate_id, decide)

    # ------------------------------------------------------------------ the whole spec

    def complete(self, session: DiscoverySession) -> CandidateSpec:
        """The draft as a full spec, missing parts from its parent or else the session's latest
        candidate; a DiscoveryError says what is missing."""
        draft = session.draft
        if draft.empty:
            raise DiscoveryError(
                "nothing to train: build a candidate first with select_reaction and "
                "select_diffusion (or refine_diffusion / modify_diffusion / simplify_diffusion)"
            )
        reference_id = draft.parent_id or session.last_candidate_id
        reference = (
            None
            if reference_id is None
            else self.reads.spec_of(self.reads.candidate(reference_id, session), session)
        )
        parent_id = draft.parent_id
        partial = draft.reaction is None or draft.diffusion is None
        if reference is None and partial:
            missing = "select_reaction" if draft.reaction is None else "select_diffusion"
            raise DiscoveryError(
                f"the draft is incomplete and the session has no earlier candidate to take the "
                f"missing part from: call {missing} first"
            )
        if reference is not None and parent_id is None and partial:
            parent_id = session.last_candidate_id
        return checked_spec(
            {
                **_reaction_part(draft, reference),
                **_diffusion_part(draft, reference),
                "parent_id": parent_id,
                "operation": draft.operation,
                "seed": session.seed,
            }
        )

    def take(self, session: DiscoverySession) -> CandidateSpec:
        """Take the draft for training: one unit of budget; the draft is cleared."""
        self.check_budget(session)
        spec = self.complete(session)
        self._refuse_duplicate(session, spec)
        if spec.has_edited_code:
            require_sandbox()
        session.draft = Draft()
        self.sessions.save_draft(session)
        session.steps_used += 1
        return spec

    @staticmethod
    def check_budget(session: DiscoverySession) -> None:
        """Refuse when the session's search budget is spent."""
        if session.steps_used >= session.budget:
            raise DiscoveryError(
                f"search budget exhausted ({session.steps_used} of {session.budget} candidates "
                "trained); finetune_candidate and evaluate_candidate remain available"
            )

    def _refuse_duplicate(self, session: DiscoverySession, spec: CandidateSpec) -> None:
        """Refuse (no budget spent, the draft kept) a structure this session already trained to
        an end (``ok`` or ``unstable``): the same reaction, diffusion, hyper-parameters and code.
        A candidate that failed or was cancelled may be trained again."""
        shown = session.aliases.shown_spec(spec)
        structure = _structure(shown.model_dump(), shown.code_hash())
        for earlier in self.reads.archive.list_candidates(session.session_id):
            if (
                earlier.operation in SEARCH_OPERATIONS
                and earlier.status in ("ok", "unstable")
                and _structure(earlier.spec or {}, earlier.code_hash) == structure
            ):
                loss = "n/a" if earlier.val_loss is None else f"{earlier.val_loss:.4g}"
                raise DiscoveryError(
                    f"duplicate of candidate {earlier.candidate_id} (status {earlier.status}, "
                    f"val loss {loss}): this session already trained this structure; change "
                    "the reaction, the diffusion or its hyper-parameters, or continue it with "
                    f"finetune_candidate(candidate_id='{earlier.candidate_id}'). No budget used; "
                    "the draft is kept."
                )


def _structure(spec: dict[str, Any], code_hash: str | None) -> tuple[Any, ...]:
    """What makes two specs (as the session shows them) the same model structure; ``code_hash``
    is the spec's (and the archive's) hash of edited code."""
    return (
        spec.get("reaction"),
        json.dumps(spec.get("reaction_hyperparameters") or {}, sort_keys=True),
        json.dumps(spec.get("reaction_residual"), sort_keys=True),
        spec.get("diffusion"),
        json.dumps(spec.get("diffusion_hyperparameters") or {}, sort_keys=True, default=str),
        code_hash,
    )


def _resolved_reaction(
    session: DiscoverySession, name: str, hyperparameters: dict[str, int] | None
) -> tuple[str, dict[str, int]]:
    """The real catalog name and checked hyper-parameters of a reaction as the agent named it.

    An anonymised session accepts its aliases and 'neural' only: a real or short catalog name is
    refused like any unknown name, and no message ever pairs a name the agent wrote with an alias
    (that would map them)."""
    aliases = session.aliases
    choices = ", ".join(reaction_names(aliases))
    if aliases.enabled:
        real = aliases.real(name)
        if real == name and name != NeuralReaction.name:
            raise DiscoveryError(
                f"{name!r} is not a reaction of this anonymised session; its reactions are "
                f"{choices} (catalog names are not accepted here)"
            )
        if real != NeuralReaction.name and hyperparameters:
            raise DiscoveryError(
                f"reaction {name!r} takes no hyper-parameters (only 'neural' does); pass none"
            )
    else:
        real = name
    try:
        return resolve_reaction(real, hyperparameters)
    except UnknownReactionError as exc:
        raise DiscoveryError(
            f"unknown reaction {name!r}; this session's reactions: {choices}"
        ) from exc
    except ValueError as exc:
        raise DiscoveryError(str(exc)) from exc


def _checked_residual(reaction: str, residual: dict[str, Any] | None) -> dict[str, Any] | None:
    """The residual's options completed with their defaults (``None``: no residual); a
    DiscoveryError names the bad option and the allowed ranges."""
    if residual is None:
        return None
    if reaction == NeuralReaction.name:
        raise DiscoveryError(
            "a residual is added to a catalog reaction model; 'neural' is already a network "
            "(pass its hidden/layers as hyperparameters instead)"
        )
    try:
        return ResidualSpec.model_validate(residual).model_dump()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'residual'}: {e['msg']}" for e in exc.errors()
        )
        raise DiscoveryError(
            f"invalid residual {residual}: {problems}. Allowed: hidden 4-128 (default 16), "
            "layers 1-3 (default 2), penalty 0-10 (default 0.1), latent 0-4 (default 0), "
            "learning_rate 0-0.1 (default 3e-3)"
        ) from exc


def _diffusion(
    template: str,
    hyperparameters: dict[str, Any],
    source: str | None,
    parent_id: str | None,
    operation: str,
) -> dict[str, Any]:
    """The draft fields of a diffusion change."""
    return {
        "diffusion": template,
        "diffusion_hyperparameters": hyperparameters,
        "diffusion_source": source,
        "parent_id": parent_id,
        "operation": operation,
    }


def _reaction_part(draft: Draft, reference: CandidateSpec | None) -> dict[str, Any]:
    if draft.reaction is not None:
        return {
            "reaction": draft.reaction,
            "reaction_hyperparameters": dict(draft.reaction_hyperparameters),
            "reaction_residual": draft.reaction_residual,
            "reaction_source": draft.reaction_source,
            "reaction_parameters": {},
        }
    assert reference is not None
    return {
        "reaction": reference.reaction,
        "reaction_hyperparameters": dict(reference.reaction_hyperparameters),
        "reaction_residual": reference.reaction_residual,
        "reaction_source": reference.reaction_source,
        "reaction_parameters": dict(reference.reaction_parameters),
    }


def _diffusion_part(draft: Draft, reference: CandidateSpec | None) -> dict[str, Any]:
    if draft.diffusion is not None:
        return {
            "diffusion": draft.diffusion,
            "diffusion_hyperparameters": dict(draft.diffusion_hyperparameters),
            "diffusion_source": draft.diffusion_source,
        }
    assert reference is not None
    return {
        "diffusion": reference.diffusion,
        "diffusion_hyperparameters": dict(reference.diffusion_hyperparameters),
        "diffusion_source": reference.diffusion_source,
    }


def _require_fibers(template: str, session: DiscoverySession) -> None:
    """Refuse, before any training, an operator that needs a fibre field the data set lacks."""
    if template_info(template).requires_fibers and session.dataset.fibers is None:
        isotropic = [
            info.name
            for info in list_templates()
            if info.family == "physical" and not info.requires_fibers
        ]
        raise DiscoveryError(
            f"{template} needs a fibre field (conduction along and across the fibres), and this "
            "session's data set has none (its summary names no 'fibers'); choose an isotropic "
            f"template such as {', '.join(isotropic)}"
        )
