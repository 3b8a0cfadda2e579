"""MCP prompts: how a host's model runs a discovery, explains a candidate, compares candidates.

``discover(dataset, budget)`` walks a host model through the whole loop with the paper's
Observe-Think-Act discipline, using only the server's tools; ``explain_candidate`` and
``compare_candidates`` put archived candidates (as the session shows them: aliases, never real
names) in front of the model with a question.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from .errors import DiscoveryError
from .inputs import GetCandidate
from .service import DiscoveryService
from .tool_text import candidate as candidate_text

DISCOVER = """\
Discover a cardiac electrophysiology digital twin du/dt = D(u; mesh) + R(u, v) for the data set \
{dataset!r} with a search budget of {budget} trained candidates, using the LEADS tools only.

Set-up: call start_session(dataset={dataset!r}, budget={budget}, anonymise=true) and keep its \
session_id; call list_catalogs(session_id) once to see the reactions (anonymised as reaction_A, \
... : choose them from the data, not from a name) and the diffusion templates with their \
hyper-parameter ranges.

Then repeat, one candidate per step, until budget_left is 0:
1. Observe: read the last train_candidate result (curves, best validation loss, diagnosis); use \
query_archive(session_id=..., sql="SELECT candidate_id, reaction, diffusion, val_loss, \
parameter_count, status FROM candidates ORDER BY val_loss") or get_candidate for more, and \
catalog://diffusion/{{name}} for a template's code.
2. Think: say in two or three sentences what the evidence shows (which reaction fits best under \
the same diffusion, over- or under-fitting, instability) and what you try next and why; store \
it with record_step(session_id, thought, action, observation).
3. Act: set up exactly ONE new candidate (select_reaction and/or one of select_diffusion, \
refine_diffusion, simplify_diffusion, modify_diffusion), then train it with \
train_candidate(session_id, wait=false) and poll wait_candidate(candidate_id, timeout_s=45) \
until its status is final (no request has to stay open for the whole fit).

Good practice: compare reactions under one cheap diffusion first (laplacian_global); keep the \
reaction with the lowest validation loss; then explore diffusion structures; refine when \
under-fitting, simplify when over-fitting, soften an unstable operator; never repeat a \
structure already in the archive. When a tool returns an error, read it and correct the call. \
When the best structure plateaus well above the noise (its diagnosis explains clearly less than \
about 97% of the variance), the catalog may lack the right model: try a hybrid reaction, \
select_reaction(session_id, reaction, residual={{"hidden": 16, "layers": 2, "penalty": 0.01, \
"latent": 2, "learning_rate": 0.01}}) (a small neural residual on the reaction's right-hand \
side, kept small by a norm penalty, with two latent state variables for the memory a catalog \
model lacks, e.g. a spike-and-dome plateau; it starts from zero, so give it more epochs: \
train_candidate(epochs=4x); the result reports its share of the reaction rate), and an \
anisotropic diffusion template when the catalog has one. To combine two structures that each \
helped (a residual on one operator, the anisotropic operator with the plain reaction), train \
the combination with train_candidate(session_id, warm_start=[residual candidate, operator \
candidate]): each part they share with it (reaction, residual network, operator) starts from \
its trained values instead of from zero (its learning rates warm up over the first \
epoch). When the diagnosis points at the \
reaction (the action potential's shape) and a residual did not close the gap, edit the \
reaction's code: read it at session://{{session_id}}/reaction/{{name}} and call \
modify_reaction(session_id, source, candidate_id=...) or modify_reaction(session_id, source, \
reaction=...).

Finish: finetune_candidate the best candidate (lowest validation loss; a hybrid reaction \
longer, e.g. epochs=60, with its learning rates warming up over the first epoch, \
warmup_epochs=1), then \
evaluate_candidate the fine-tuned one on the test split, look at its activation map and \
training curves, and report the structure, its test MSE and activation-time error, and what \
the search taught you."""

EXPLAIN = """\
Explain candidate {candidate_id} of a LEADS discovery to a cardiac modeller: what structure it \
is (reaction model and diffusion operator), what its training curves and diagnosis say (fit, \
over- or under-fitting, stability), how it compares with its parent, and what you would try \
next. The archived record:

{record}

Use get_candidate, query_archive and evaluate_candidate for anything more you need."""

COMPARE = """\
Compare LEADS candidates {first} and {second}: which describes the data better and why (the \
validation losses, the curves, the number of parameters, what each structure assumes), and \
whether the difference is worth its complexity. The archived records:

{first_record}

{second_record}"""


async def _record(service: DiscoveryService, candidate_id: str) -> str:
    """A candidate as its session shows it, in text; a refusal becomes its message."""
    try:
        return candidate_text(await service.get_candidate(GetCandidate(candidate_id=candidate_id)))
    except DiscoveryError as exc:
        return f"({exc})"


def register_prompts(server: MCPServer, service: DiscoveryService) -> None:
    """Publish the three prompts on ``server``."""

    @server.prompt(
        name="discover",
        title="Discover a digital twin",
        description="Run a whole LEADS discovery on a data set within a budget, step by step "
        "(Observe-Think-Act), ending with an evaluated twin.",
    )
    def discover(
        dataset: Annotated[
            str, Field(description="data set name (ap, rm, ms, fhn, fk or a saved set)")
        ] = "ap",
        budget: Annotated[str, Field(description="candidates to train (1-200)")] = "8",
    ) -> str:
        return DISCOVER.format(dataset=dataset, budget=_budget(budget))

    @server.prompt(
        name="explain_candidate",
        title="Explain a candidate",
        description="Explain what an archived candidate is and what its curves say.",
    )
    async def explain_candidate(
        candidate_id: Annotated[str, Field(description="candidate id (c-<12 hex>)")],
    ) -> str:
        return EXPLAIN.format(
            candidate_id=candidate_id, record=await _record(service, candidate_id)
        )

    @server.prompt(
        name="compare_candidates",
        title="Compare two candidates",
        description="Compare two archived candidates: fit, curves, complexity.",
    )
    async def compare_candidates(
        first: Annotated[str, Field(description="a candidate id")],
        second: Annotated[str, Field(description="another candidate id")],
    ) -> str:
        return COMPARE.format(
            first=first,
            second=second,
            first_record=await _record(service, first),
            second_record=await _record(service, second),
        )


def _budget(text: str) -> int:
    """A prompt argument (always a string in MCP) as a budget within the tool's range."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"budget must be a whole number, not {text!r}") from None
    if not 1 <= value <= 200:
        raise ValueError(f"budget must be between 1 and 200, not {value}")
    return value
