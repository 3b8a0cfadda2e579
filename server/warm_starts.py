"""``train_candidate(warm_start=[...])``: which trained candidates initialise which parts of the
draft, checked before any budget is spent.

The parts and the rule that two candidates share one are the engine's
(:mod:`leads_engine.warm_start`); this module finds the parents in the session's archive,
refuses what cannot work (an unknown or foreign candidate, one without weights, one that shares
no part with the draft) and packs the parents' specs and weights for the worker, which copies
the tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leads_engine.spec import CandidateSpec
from leads_engine.warm_start import part_sources, shared_parts

from .errors import DiscoveryError
from .inputs import MAX_WARM_START
from .reads import Reads
from .state import DiscoverySession


@dataclass(frozen=True)
class WarmStart:
    """The parents of a warm start: ``sources`` says which candidate gives each part
    (``{"reaction": id, "diffusion": id, ...}``); ``parents`` carries each parent's real spec
    (JSON) and trained weights to the worker, in the order asked for."""

    sources: dict[str, str]
    parents: tuple[tuple[str, bytes], ...] = field(repr=False)


def resolve_warm_start(
    reads: Reads, session: DiscoverySession, spec: CandidateSpec, candidate_ids: list[str]
) -> WarmStart | None:
    """The warm start of ``spec`` from ``candidate_ids`` (``None`` when none is asked for);
    a :class:`DiscoveryError` says why a candidate cannot be one."""
    if not candidate_ids:
        return None
    if len(set(candidate_ids)) != len(candidate_ids) or len(candidate_ids) > MAX_WARM_START:
        raise DiscoveryError(
            f"warm_start takes up to {MAX_WARM_START} different candidate ids, got {candidate_ids}"
        )
    parents: list[tuple[str, CandidateSpec, bytes]] = []
    for candidate_id in candidate_ids:
        parent = reads.trained_parent(candidate_id, session)
        weights = reads.stored_weights(candidate_id)
        if weights is None:
            status = reads.candidate(candidate_id, session).status
            raise DiscoveryError(
                f"candidate {candidate_id!r} has no weights (status {status}): warm-start from a "
                "candidate whose training finished"
            )
        if not shared_parts(spec, parent.spec):
            raise DiscoveryError(
                f"candidate {candidate_id!r} shares no part with the draft: a part is shared "
                "when both use the same reaction model (and, for the residual, the same network "
                "shape) or the same diffusion template with the same hyper-parameters and code; "
                f"the draft is {_shown(session, spec)}, {candidate_id} is "
                f"{_shown(session, parent.spec)}"
            )
        parents.append((candidate_id, parent.spec, weights))
    sources = part_sources(spec, [(cid, parent_spec) for cid, parent_spec, _ in parents])
    return WarmStart(
        sources={part: sources[part] for part in sorted(sources)},
        parents=tuple((parent_spec.model_dump_json(), data) for _, parent_spec, data in parents),
    )


def _shown(session: DiscoverySession, spec: CandidateSpec) -> str:
    """A spec's structure in words, with the reaction as the session shows it."""
    residual = " + residual" if spec.reaction_residual is not None else ""
    return f"{session.aliases.show(spec.reaction)}{residual} + {spec.diffusion}"
