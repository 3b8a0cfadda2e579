"""Loader for the diffusion catalog: ``du/dt = D(u; mesh)`` templates shipped as source files.

Each template is one self-contained file ``catalogs/diffusion/<name>.py`` (package
``leads_catalogs.diffusion``) defining ``class Diffusion(nn.Module)`` with
``__init__(num_nodes, **hyperparameters)`` and ``forward(u [B*N, 1], graph) -> du/dt [B*N, 1]``
(per ms, ``graph`` a :class:`leads_engine.graph.MeshGraph`). ``catalog.json`` next to them
describes each template (summary, equation, family, how often the trainer evaluates it) and its
hyper-parameters with types, defaults and ranges.

This module trusts the catalog files. Source edited by an agent is passed as ``source=`` and
must have been checked by the sandbox before it reaches :func:`load_diffusion_class`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import linecache
import sys
import types
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from torch import nn

__all__ = [
    "DiffusionSpecError",
    "TemplateInfo",
    "list_templates",
    "template_info",
    "template_source",
    "resolve_hyperparameters",
    "load_diffusion_class",
    "build_diffusion",
    "parameter_count",
]

_CATALOG_PACKAGE = "leads_catalogs"
_CATALOG_FOLDER = "diffusion"
_CATALOG_FILE = "catalog.json"
_CLASS_NAME = "Diffusion"


class DiffusionSpecError(ValueError):
    """An unknown template, invalid hyper-parameters or a source without a usable class."""


@dataclass(frozen=True)
class TemplateInfo:
    """One catalog entry (see ``catalogs/diffusion/catalog.json``)."""

    name: str
    summary: str
    equation: str
    family: str  # "physical" | "neural"
    evaluation: str  # "every_step" | "every_frame" | "every_<k>_frames"
    #: trajectories per optimizer step, and the Adam step of the template's ``raw_``
    #: conductivity parameters, when the training config leaves them open
    batch_size: int
    conductivity_learning_rate: float
    hyperparameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    file: str = ""
    #: whether the operator needs the data set's fibre field (an anisotropic operator)
    requires_fibers: bool = False

    @property
    def refresh_frames(self) -> int:
        """Data frames over which the trainer holds this template's conductances (1: every
        frame). The neural templates, whose evaluation dominates a fit, refresh every 2."""
        if self.evaluation.startswith("every_") and self.evaluation.endswith("_frames"):
            return int(self.evaluation[len("every_") : -len("_frames")])
        return 1


def _catalog_dir() -> Any:  # an importlib Traversable (folder or zip entry)
    return resources.files(_CATALOG_PACKAGE) / _CATALOG_FOLDER


def list_templates() -> list[TemplateInfo]:
    """All diffusion templates of the catalog, in catalog order."""
    return list(_catalog())


@functools.cache
def _catalog() -> tuple[TemplateInfo, ...]:
    """The catalog description, read once per process (it is package data, fixed at run time;
    a sandboxed worker reads it before it loses file access)."""
    catalog = json.loads((_catalog_dir() / _CATALOG_FILE).read_text(encoding="utf-8"))
    return tuple(
        TemplateInfo(
            name=entry["name"],
            summary=entry["summary"],
            equation=entry["equation"],
            family=entry["family"],
            evaluation=entry["evaluation"],
            batch_size=int(entry["batch_size"]),
            conductivity_learning_rate=float(entry["conductivity_learning_rate"]),
            hyperparameters=entry.get("hyperparameters", {}),
            file=entry["file"],
            requires_fibers=bool(entry.get("requires_fibers", False)),
        )
        for entry in catalog["templates"]
    )


def template_info(name: str) -> TemplateInfo:
    """The catalog entry called ``name``; :class:`DiffusionSpecError` lists the known names."""
    templates = list_templates()
    for info in templates:
        if info.name == name:
            return info
    known = ", ".join(info.name for info in templates)
    raise DiffusionSpecError(f"unknown diffusion template {name!r}; known templates: {known}")


def template_source(name: str) -> str:
    """The Python source of template ``name`` (what an agent reads and edits)."""
    return (_catalog_dir() / template_info(name).file).read_text(encoding="utf-8")


def _check_value(template: str, name: str, spec: dict[str, Any], value: Any) -> Any:
    """Validate one hyper-parameter value against its spec; return it (ints widened for float)."""
    kind = spec["type"]
    where = f"hyper-parameter {name!r} of diffusion template {template!r}"
    if kind == "choice":
        choices = spec["choices"]
        if value not in choices:
            raise DiffusionSpecError(f"{where}: invalid choice {value!r}; choose one of {choices}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise DiffusionSpecError(
                f"{where} must be an integer, got {value!r} ({type(value).__name__})"
            )
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DiffusionSpecError(
                f"{where} must be a number, got {value!r} ({type(value).__name__})"
            )
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise DiffusionSpecError(f"{where} must be finite, got {value!r}")
    else:  # a broken catalog entry, not a user error
        raise DiffusionSpecError(f"{where} has unknown type {kind!r} in the catalog")
    low, high = spec.get("min"), spec.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        raise DiffusionSpecError(f"{where}: value {value!r} is out of range [{low}, {high}]")
    return value


def resolve_hyperparameters(name: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Complete ``values`` with the catalog defaults of template ``name`` and validate them.

    Refuses unknown names, wrong types (a bool is not an int), out-of-range numbers and
    invalid choices, with a :class:`DiffusionSpecError` naming the parameter and the allowed
    values.
    """
    specs = template_info(name).hyperparameters
    values = dict(values or {})
    unknown = sorted(set(values) - set(specs))
    if unknown:
        allowed = ", ".join(specs) or "none"
        raise DiffusionSpecError(
            f"unknown hyper-parameter(s) {unknown} for diffusion template {name!r}; "
            f"allowed: {allowed}"
        )
    return {
        key: _check_value(name, key, spec, values.get(key, spec["default"]))
        for key, spec in specs.items()
    }


def load_diffusion_class(source: str, filename: str = "<diffusion>") -> type[nn.Module]:
    """Execute template ``source`` in a fresh module and return its ``Diffusion`` class."""
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as exc:
        raise DiffusionSpecError(
            f"{filename}: syntax error at line {exc.lineno}: {exc.msg}"
        ) from exc
    # PyG's MessagePassing resolves type hints through sys.modules[cls.__module__], and
    # tracebacks/inspect read source through linecache: register both under a name derived
    # from the source, so reloading the same source reuses the entry.
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    module = types.ModuleType(f"leads_diffusion_{digest}")
    module.__file__ = filename
    sys.modules[module.__name__] = module
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        exec(code, module.__dict__)  # trusted catalog code or sandbox-checked source
    except Exception as exc:
        raise DiffusionSpecError(
            f"{filename}: executing the source failed: {type(exc).__name__}: {exc}"
        ) from exc
    cls = module.__dict__.get(_CLASS_NAME)
    if cls is None:
        raise DiffusionSpecError(f"{filename}: defines no class named {_CLASS_NAME!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise DiffusionSpecError(
            f"{filename}: {_CLASS_NAME!r} must be a subclass of torch.nn.Module, got {cls!r}"
        )
    return cls


def build_diffusion(
    name: str,
    num_nodes: int,
    hyperparameters: dict[str, Any] | None = None,
    source: str | None = None,
) -> nn.Module:
    """Instantiate template ``name`` for a mesh of ``num_nodes`` nodes.

    ``source`` replaces the catalog file (an edited version of the template); the
    hyper-parameters are still validated against the catalog entry of ``name``.
    """
    resolved = resolve_hyperparameters(name, hyperparameters)
    if source is None:
        source = template_source(name)
        filename = f"<diffusion catalog: {name}>"
    else:
        filename = f"<diffusion edited: {name}>"
    cls = load_diffusion_class(source, filename)
    try:
        return cls(num_nodes, **resolved)
    except TypeError as exc:
        raise DiffusionSpecError(
            f"{filename}: Diffusion(num_nodes, **{resolved}) failed: {exc}"
        ) from exc


def parameter_count(
    name: str,
    num_nodes: int,
    hyperparameters: dict[str, Any] | None = None,
    source: str | None = None,
) -> int:
    """Number of parameter scalars of the built template (its complexity figure)."""
    module = build_diffusion(name, num_nodes, hyperparameters, source)
    return sum(p.numel() for p in module.parameters())
