"""The catalogs as the agent sees them: reaction models under the session's names (equations
only when anonymised), diffusion templates with their hyper-parameters, and the operations."""

from __future__ import annotations

import ast
import inspect

from leads_engine import diffusion as diffusion_catalog
from leads_engine.diffusion import DiffusionSpecError
from leads_engine.reactions import (
    REACTION_MODELS,
    NeuralReaction,
    ReactionModel,
    catalog_source,
    resolve_reaction_name,
)
from leads_engine.spec import NEURAL_HYPERPARAMETERS as NEURAL_NAMES

from .anonymise import ReactionAliases
from .errors import DiscoveryError
from .models import CatalogsResult, DiffusionEntry, ParameterInfo, ReactionEntry

NEURAL_HYPERPARAMETERS = dict(
    zip(
        NEURAL_NAMES,
        (
            "int 4-256 (default 32): width of the MLP",
            "int 1-4 (default 2): hidden layers",
            "int 1-3 (default 1): learned recovery variables",
        ),
        strict=True,
    )
)
OPERATIONS_HELP = {
    "select": "select_reaction / select_diffusion: pick a catalog reaction and diffusion template",
    "refine": "refine_diffusion: change hyper-parameters of a trained candidate's diffusion",
    "modify": "modify_diffusion: edit the code of a template or of a trained candidate; "
    "modify_reaction: edit the code of a catalog reaction or of a trained candidate's reaction",
    "simplify": "simplify_diffusion: a variant of a trained candidate with fewer parameters",
    "train": "train_candidate: train the draft (one unit of the search budget)",
    "finetune": "finetune_candidate: continue training a candidate (no budget)",
}


def equations(doc: str) -> str:
    """The ``.. math::`` block of a reaction docstring (no names, no citation)."""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    inside = False
    for line in lines:
        if line.strip().startswith(".. math::"):
            inside = True
            continue
        if inside:
            if line.strip() and not line.startswith((" ", "\t")):
                break
            out.append(line.strip())
    return "\n".join(part for part in out if part) or "(equations not documented)"


def reaction_names(aliases: ReactionAliases) -> list[str]:
    """The reaction names a session shows: the catalog's (or their aliases), then 'neural'."""
    return sorted(aliases.show(name) for name in REACTION_MODELS) + [NeuralReaction.name]


def _parameters(cls: type[ReactionModel]) -> dict[str, ParameterInfo]:
    return {
        key: ParameterInfo(
            default=r.default, low=r.low, high=r.high, log_scale=r.log, description=r.description
        )
        for key, r in cls.all_parameter_ranges().items()
    }


def catalogs(session_id: str | None, aliases: ReactionAliases) -> CatalogsResult:
    """Reaction models (under the session's names) and diffusion templates."""
    reactions: list[ReactionEntry] = []
    for real, cls in REACTION_MODELS.items():
        doc = cls.__doc__ or ""
        reactions.append(
            ReactionEntry(
                name=aliases.show(real),
                description=equations(doc) if aliases.enabled else inspect.cleandoc(doc),
                state_names=list(cls.state_names),
                parameters=_parameters(cls),
            )
        )
    reactions.sort(key=lambda entry: entry.name)
    reactions.append(
        ReactionEntry(
            name=NeuralReaction.name,
            description=inspect.cleandoc(NeuralReaction.__doc__ or ""),
            state_names=["w1 .. w<n_recovery>"],
            parameters=_parameters(NeuralReaction),
            hyperparameters=NEURAL_HYPERPARAMETERS,
        )
    )
    templates = [
        DiffusionEntry(
            name=info.name,
            family=info.family,
            summary=info.summary,
            equation=info.equation,
            hyperparameters=info.hyperparameters,
            source_uri=f"catalog://diffusion/{info.name}",
            batch_size=info.batch_size,
        )
        for info in diffusion_catalog.list_templates()
    ]
    return CatalogsResult(
        session_id=session_id,
        anonymised=aliases.enabled,
        reactions=reactions,
        diffusion_templates=templates,
        operations=OPERATIONS_HELP,
    )


def template_source(name: str) -> str:
    """The Python source of a diffusion template (what modify_diffusion edits)."""
    try:
        return diffusion_catalog.template_source(name)
    except DiffusionSpecError as exc:
        raise DiscoveryError(str(exc)) from exc


def reaction_source(name: str, aliases: ReactionAliases) -> str:
    """The Python source of a catalog reaction model (what modify_reaction edits), ``name`` as
    the session names it. An anonymised session gets it without anything that names the model:
    no module docstring or comments, the class called ``Reaction`` and named by its alias, and
    the equations as its docstring (what list_catalogs shows it)."""
    if aliases.enabled:
        real = aliases.real(name)
        if real == name or real not in REACTION_MODELS:
            choices = ", ".join(n for n in reaction_names(aliases) if n != NeuralReaction.name)
            raise DiscoveryError(f"no reaction {name!r} in this session; its reactions: {choices}")
        return _neutral_source(real, name)
    try:
        return catalog_source(resolve_reaction_name(name))
    except ValueError as exc:
        raise DiscoveryError(str(exc)) from exc


def _neutral_source(real: str, shown: str) -> str:
    """Catalog reaction ``real``'s source with nothing naming it (see :func:`reaction_source`)."""
    cls = REACTION_MODELS[real]
    tree = ast.parse(catalog_source(real))
    body = tree.body[1:] if _is_docstring(tree.body[0]) else tree.body
    for node in body:
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            node.name = "Reaction"
            statements = node.body[1:] if _is_docstring(node.body[0]) else node.body
            for statement in statements:
                if isinstance(statement, ast.Assign) and [
                    getattr(t, "id", None) for t in statement.targets
                ] == ["name"]:
                    statement.value = ast.Constant(shown)
            doc = ast.Expr(ast.Constant(f"{shown}:\n\n{equations(cls.__doc__ or '')}\n"))
            node.body = [doc, *statements]
    tree.body = body
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )
