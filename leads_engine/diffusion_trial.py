"""The trial run of an edited diffusion source: static rules, then a sandboxed forward/backward.

:func:`validate_diffusion_source` first applies the static rules of
:mod:`leads_engine.sandbox.rules`; a source that passes runs :func:`dynamic_check` in a
locked-down worker (:class:`leads_engine.sandbox.Worker`), which instantiates
``Diffusion(num_nodes, **hyperparameters)`` on a small mesh graph and checks ``forward``
(shape ``[B*N, 1]``, float32, finite), ``edge_conductance`` if defined (``[B*2E]``, finite,
dissipative) and that gradients flow. Dynamic rules: ``runtime-error``, ``output-shape``,
``output-dtype``, ``output-nonfinite``, ``no-gradient``, ``gradient-nonfinite``,
``conductance-shape``, ``conductance-nonfinite``, ``conductance-negative`` (negative
conductances that make the weighted graph Laplacian indefinite: the diffusion would create
energy; an anisotropic FE stiffness's few negative ones pass), and the runner's
exit causes ``timeout``, ``cpu-time``, ``memory``, ``output-too-large``, ``sandbox-denied``,
``killed``, ``crashed``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .diffusion import DiffusionSpecError, load_diffusion_class
from .fibers import rule_based_fibers
from .graph import MeshGraph
from .heart_mesh import make_lv_mesh
from .sandbox import EDITED_FILENAME, SandboxError, SandboxLimits, Violation, Worker, check_source

__all__ = ["ValidationReport", "dynamic_check", "run_code_trial", "validate_diffusion_source"]


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_diffusion_source`, written for the agent that made the edit.

    ``violations`` holds the static violations, or the one dynamic failure (its rule and
    line); ``traceback`` is trimmed to frames of the edited source; ``output`` is the tail of
    what the code printed; ``protections`` lists the sandbox protections that were in force.
    """

    accepted: bool
    message: str
    violations: list[Violation]
    traceback: str | None
    seconds: float
    parameter_count: int | None
    output: str = ""
    protections: list[str] = field(default_factory=list)


def _tensor_problem(value: Any, shape: tuple[int, ...], what: str) -> tuple[str, str] | None:
    """(rule suffix, message) if ``value`` is not a finite float32 tensor of ``shape``."""
    if not isinstance(value, torch.Tensor):
        return "shape", f"{what} must return a torch.Tensor, got {type(value).__name__}"
    if tuple(value.shape) != shape:
        return "shape", f"{what} returned shape {list(value.shape)}, expected {list(shape)}"
    if value.dtype != torch.float32:
        return "dtype", f"{what} returned dtype {value.dtype}, expected torch.float32"
    if not bool(torch.isfinite(value.detach()).all()):
        bad = int((~torch.isfinite(value.detach())).sum())
        return "nonfinite", f"{what} returned {bad} NaN/Inf values"
    return None


def _lowest_dissipation(conductance: torch.Tensor, edge_index: torch.Tensor, rows: int) -> float:
    """Lowest eigenvalue, relative to the largest, of the symmetric part of the weighted graph
    Laplacian ``L = diag(W 1) - W`` (``W_ij`` the conductance of edge ``(i, j)``).

    ``u^T L u = 1/2 sum_ij w_ij (u_i - u_j)^2`` is the energy the flux form dissipates: a
    diffusion must have ``L >= 0``. Individual negative conductances pass when the whole stays
    positive semi-definite, as in an anisotropic finite-element stiffness, whose off-diagonals
    may be positive where a cell is obtuse with respect to the fibres."""
    weights = torch.zeros(rows, rows, dtype=torch.float64)
    weights[edge_index[0], edge_index[1]] = conductance.double()
    laplacian = torch.diag(weights.sum(dim=1)) - weights
    eigenvalues = torch.linalg.eigvalsh(0.5 * (laplacian + laplacian.T))
    scale = float(eigenvalues.abs().max())
    return float(eigenvalues.min()) / scale if scale > 0 else 0.0


def dynamic_check(
    source: str,
    hyperparameters: dict[str, Any] | None = None,
    num_nodes: int = 60,
    batch_size: int = 2,
) -> dict[str, Any]:
    """Run inside the sandbox: build, forward, check outputs and gradients. Returns plain data.

    ``{"accepted": bool, "rule": str | None, "message": str, "line": int | None,
    "traceback": str | None, "parameter_count": int | None}``. Exceptions of the edited code
    propagate to the worker, which trims their traceback.
    """

    mesh = make_lv_mesh(num_nodes)  # with fibres, so that anisotropic templates can run
    graph = MeshGraph.from_mesh(mesh.with_fibers(rule_based_fibers(mesh)), batch_size)
    rows, edges = batch_size * num_nodes, int(graph.edge_index.shape[1])
    torch.manual_seed(0)
    try:
        cls = load_diffusion_class(source, EDITED_FILENAME)
    except DiffusionSpecError as exc:
        if exc.__cause__ is not None:
            raise exc.__cause__ from None
        raise
    module = cls(num_nodes, **(hyperparameters or {}))
    parameters = [p for p in module.parameters() if p.requires_grad]
    count = sum(int(p.numel()) for p in module.parameters())

    def refuse(rule: str, message: str, method: str = "forward") -> dict[str, Any]:
        code = getattr(getattr(cls, method, None), "__code__", None)
        line = code.co_firstlineno if code and code.co_filename == EDITED_FILENAME else None
        return {
            "accepted": False,
            "rule": rule,
            "message": message,
            "line": line,
            "traceback": None,
            "parameter_count": count,
        }

    u = torch.rand(rows, 1)
    started = time.perf_counter()
    out = module(u, graph)
    problem = _tensor_problem(out, (rows, 1), "forward(u, graph)")
    if problem:
        return refuse(f"output-{problem[0]}", problem[1] + f" (u is [{rows}, 1])")
    if hasattr(module, "edge_conductance"):
        conductance = module.edge_conductance(u, graph)
        problem = _tensor_problem(conductance, (edges,), "edge_conductance(u, graph)")
        if problem:
            return refuse(f"conductance-{problem[0]}", problem[1], "edge_conductance")
        if bool((conductance.detach() < 0).any()):
            lowest = _lowest_dissipation(conductance.detach(), graph.edge_index, rows)
            if lowest < -1e-6:
                return refuse(
                    "conductance-negative",
                    "edge_conductance returned negative conductances that make the diffusion "
                    f"create energy (the weighted graph Laplacian's lowest eigenvalue is "
                    f"{lowest:.3g} of its largest): keep them >= 0 (softplus/exp), or negative "
                    "only where an anisotropic FE stiffness puts them",
                    "edge_conductance",
                )
    if parameters:
        if not out.requires_grad:
            return refuse("no-gradient", "forward output does not depend on any parameter")
        weights = torch.randn(rows, 1, generator=torch.Generator().manual_seed(1))
        (out * weights).sum().backward()
        grads = [p.grad for p in parameters]
        if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
            return refuse("gradient-nonfinite", "a parameter received a NaN/Inf gradient")
        if not any(g is not None and bool((g != 0).any()) for g in grads):
            return refuse(
                "no-gradient",
                f"none of the {len(parameters)} parameters receives a non-zero gradient",
            )
    elapsed = time.perf_counter() - started
    reached = sum(1 for p in parameters if p.grad is not None and bool((p.grad != 0).any()))
    return {
        "accepted": True,
        "rule": None,
        "message": (
            f"accepted: forward -> [{rows}, 1] float32 finite"
            + (
                ", edge_conductance -> [B*2E] finite >= 0"
                if hasattr(module, "edge_conductance")
                else ""
            )
            + f"; {count} parameters, {reached} of {len(parameters)} tensors get gradients;"
            f" forward+backward {elapsed * 1000:.0f} ms on {num_nodes} nodes x {batch_size}"
        ),
        "line": None,
        "traceback": None,
        "parameter_count": count,
    }


_REASON_HINTS = {
    "timeout": "the code ran past the wall-clock limit (an endless or very slow loop?)",
    "cpu-time": "the code used more CPU time than allowed",
    "memory": "the code exceeded the memory limit",
    "killed": "the worker was killed (memory?)",
    "output-too-large": "the code printed more output than allowed",
    "sandbox-denied": "the code tried an operation the sandbox forbids",
}


def validate_diffusion_source(
    source: str,
    timeout_s: float = 20.0,
    limits: SandboxLimits | None = None,
    *,
    hyperparameters: dict[str, Any] | None = None,
) -> ValidationReport:
    """Check edited diffusion ``source``: static rules, then a sandboxed trial run.

    ``hyperparameters`` (optional, JSON-like) are passed to ``Diffusion(num_nodes, ...)``;
    by default the class's own defaults are used. Never raises for a bad source: the report
    says why it was refused, with the line, the rule and a traceback trimmed to the edited
    code. Only :class:`SandboxError` with reason ``unsupported`` (no POSIX) propagates.
    """
    hyperparameters = json.loads(json.dumps(hyperparameters or {}))
    return run_code_trial(
        source,
        "diffusion",
        dynamic_check,
        (source, hyperparameters),
        limits or SandboxLimits(),
        timeout_s,
    )


def run_code_trial(
    source: str,
    kind: str,
    trial: Callable[..., dict[str, Any]],
    arguments: tuple[Any, ...],
    limits: SandboxLimits,
    timeout_s: float,
    traceback_in_message: bool = False,
) -> ValidationReport:
    """The static rules for ``kind`` code (``check_source``), then ``trial(*arguments)`` in a
    locked-down worker: the report of either. ``trial`` returns ``accepted``, ``message``,
    ``rule``, ``line`` and ``parameter_count``; a worker failure (timeout, memory, an exception
    in the edited code) becomes a refusal with its reason, line and traceback."""
    started = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - started

    violations = check_source(source, kind)
    if violations:
        listing = "\n".join(f"  {v}" for v in violations[:50])
        return ValidationReport(
            accepted=False,
            message=f"refused by the static checks ({len(violations)} problem(s)):\n{listing}",
            violations=violations,
            traceback=None,
            seconds=elapsed(),
            parameter_count=None,
        )
    try:
        outcome = Worker(trial, arguments, limits=limits, timeout_s=timeout_s).run()
    except SandboxError as exc:
        if exc.reason == "unsupported":
            raise
        hint = _REASON_HINTS.get(exc.reason, "the code raised an exception")
        where = f" at line {exc.line}" if exc.line else ""
        shown = f"\n{exc.traceback}" if traceback_in_message and exc.traceback else ""
        return ValidationReport(
            accepted=False,
            message=f"refused [{exc.reason}]{where}: {hint}: {exc}{shown}",
            violations=[Violation(exc.line or 0, exc.reason, str(exc))],
            traceback=exc.traceback,
            seconds=elapsed(),
            parameter_count=None,
            output=exc.output,
        )
    result = outcome.value
    accepted = bool(result["accepted"])
    line = result.get("line")
    where = f" at line {line}" if line else ""
    return ValidationReport(
        accepted=accepted,
        message=result["message"]
        if accepted
        else f"refused [{result['rule']}]{where}: {result['message']}",
        violations=[] if accepted else [Violation(line or 0, result["rule"], result["message"])],
        traceback=None,
        seconds=elapsed(),
        parameter_count=result.get("parameter_count"),
        protections=outcome.protections,
    )
