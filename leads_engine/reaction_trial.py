r"""The trial run of an edited reaction model: static rules, then a sandboxed check of its rates.

:func:`validate_reaction_source` applies the static rules of :mod:`leads_engine.sandbox.rules`
(``kind="reaction"``: the same refusals as diffusion code, and exactly one class derived from
:class:`~leads_engine.reactions.ReactionModel` with ``rates(self, u, w, p)``); a source that
passes runs :func:`dynamic_check` in a locked-down worker, which builds the model and checks:

* ``declaration``: ``state_names`` (1-8 names), ``resting_state`` (``1 + n_recovery`` finite
  numbers, ``u`` first), ``parameter_ranges`` (names to ``ParameterRange``), ``time_scale_range``
  and ``max_step_ms`` (None or at least :data:`MIN_STEP_MS`) are declared as the base expects;
* ``rates-shape``/``rates-dtype``/``rates-nonfinite``: ``rates(u [n, 1], w [r, n, 1], p)``
  returns ``(du [n, 1], dw [r, n, 1])``, float32 and finite, at rest and on a grid of states
  ``u in [-0.1, 1.2]``, each recovery variable between ``min(0, rest)`` and ``max(1, rest)``
  (the message names the first bad state);
* ``rest-drift``: rest is (near) an equilibrium, ``|R(y_rest)| * time_scale <=``
  :data:`REST_TOLERANCE_PER_MS` per ms for every variable (a model that leaves rest by itself
  excites the whole tissue without a stimulus);
* ``integration-nonfinite``, ``gradient-nonfinite``, ``no-gradient``: a few milliseconds of a
  stimulated cable integrated by the training's fused integrator (its eager path, the one edited
  code trains on: forward-mode Jacobians of ``rates`` in the adjoint) stay finite, and the loss's
  gradients reach the model's parameters, finite;

and the runner's exit causes (``timeout``, ``memory``, ``sandbox-denied``, ...) as for
diffusion code. Any exception of the edited code is refused as ``runtime-error`` with its line
and a traceback trimmed to the edited source.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import torch

from .diffusion_trial import ValidationReport, run_code_trial
from .integrator import FluxOperatorLayout, SegmentPlan, integrate_segment
from .reactions import ParameterRange, ReactionModel, ReactionSourceError, load_reaction_class
from .sandbox import (
    EDITED_REACTION_FILENAME,
    SandboxLimits,
)

__all__ = [
    "MIN_STEP_MS",
    "REST_TOLERANCE_PER_MS",
    "ValidationReport",
    "dynamic_check",
    "validate_reaction_source",
]

#: Largest rate per ms of data time allowed at the resting state (a drift of 0.1 in 100 ms).
REST_TOLERANCE_PER_MS = 1e-3
#: Smallest ``max_step_ms`` a model may declare (the reaction's Euler sub-step, ms).
MIN_STEP_MS = 0.005
#: Recovery variables a model may declare.
MAX_RECOVERY = 8
#: Potentials of the grid of states the rates are checked on.
GRID_U = torch.linspace(-0.1, 1.2, 14)
#: Values per recovery variable on the grid (a random sample replaces a grid too large).
GRID_W_POINTS = 6
GRID_MAX_STATES = 20_000


def _declaration_problem(cls: type[ReactionModel]) -> str | None:
    """What is wrong with the class-level declarations the base class relies on, or None."""
    names = getattr(cls, "state_names", None)
    if not isinstance(names, tuple | list) or not all(isinstance(n, str) for n in names):
        return "state_names must be a tuple of recovery variable names, e.g. ('h',)"
    if not 1 <= len(names) <= MAX_RECOVERY:
        return f"state_names declares {len(names)} recovery variables; 1 to {MAX_RECOVERY} allowed"
    rest = getattr(cls, "resting_state", None)
    if not isinstance(rest, tuple | list) or len(rest) != 1 + len(names):
        return (
            f"resting_state must hold 1 + {len(names)} numbers (u first, then {', '.join(names)})"
        )
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in rest):
        return f"resting_state must hold finite numbers, got {rest!r}"
    ranges = getattr(cls, "parameter_ranges", None)
    if not isinstance(ranges, dict) or not all(
        isinstance(k, str) and isinstance(v, ParameterRange) for k, v in ranges.items()
    ):
        return "parameter_ranges must map parameter names to ParameterRange(default, low, high)"
    if "time_scale" in ranges:
        return "parameter_ranges must not declare 'time_scale' (time_scale_range does)"
    if not isinstance(getattr(cls, "time_scale_range", None), ParameterRange):
        return "time_scale_range must be a ParameterRange, e.g. ParameterRange(1.0, 0.05, 20.0)"
    step = getattr(cls, "max_step_ms", None)
    if step is not None and not (isinstance(step, int | float) and step >= MIN_STEP_MS):
        return f"max_step_ms must be None or a number >= {MIN_STEP_MS} (ms), got {step!r}"
    return None


def _rates_problem(out: Any, r: int, n: int) -> tuple[str, str] | None:
    """(rule, message) if ``out`` is not ``(du [n, 1], dw [r, n, 1])``, float32 and finite."""
    if not isinstance(out, tuple | list) or len(out) != 2:
        return "rates-shape", f"rates must return a pair (du, dw), got {type(out).__name__}"
    for value, shape, what in ((out[0], (n, 1), "du"), (out[1], (r, n, 1), "dw")):
        if not isinstance(value, torch.Tensor):
            return "rates-shape", f"{what} must be a torch.Tensor, got {type(value).__name__}"
        if tuple(value.shape) != shape:
            return (
                "rates-shape",
                f"{what} has shape {list(value.shape)}, expected {list(shape)} "
                f"(u is [{n}, 1], w is [{r}, {n}, 1])",
            )
        if value.dtype != torch.float32:
            return "rates-dtype", f"{what} has dtype {value.dtype}, expected torch.float32"
    return None


def _first_nonfinite(
    u: torch.Tensor, w: torch.Tensor, du: torch.Tensor, dw: torch.Tensor, names: tuple[str, ...]
) -> str | None:
    """The first state whose rates are NaN/Inf, described, or None."""
    bad = ~torch.isfinite(du[:, 0]) | (~torch.isfinite(dw[:, :, 0])).any(dim=0)
    if not bool(bad.any()):
        return None
    i = int(bad.nonzero()[0, 0])
    state = ", ".join(
        [f"u={float(u[i, 0]):.3g}"]
        + [f"{name}={float(w[k, i, 0]):.3g}" for k, name in enumerate(names)]
    )
    return f"rates are NaN/Inf at {int(bad.sum())} of {len(bad)} states, first at ({state})"


def _grid(rest: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """States ``(u [c, 1], w [r, c, 1])`` covering the physiological range."""
    axes = [GRID_U] + [torch.linspace(min(0.0, v), max(1.0, v), GRID_W_POINTS) for v in rest[1:]]
    if math.prod(len(a) for a in axes) <= GRID_MAX_STATES:
        states = torch.tensor(list(itertools.product(*(a.tolist() for a in axes))))
    else:
        generator = torch.Generator().manual_seed(0)
        unit = torch.rand(GRID_MAX_STATES, len(axes), generator=generator)
        low = torch.tensor([float(a[0]) for a in axes])
        high = torch.tensor([float(a[-1]) for a in axes])
        states = low + (high - low) * unit
    states = states.to(torch.float32)
    return states[:, :1].contiguous(), states[:, 1:].T.unsqueeze(-1).contiguous()


def _cable(nodes: int) -> FluxOperatorLayout:
    """A cable of ``nodes`` nodes (edges both ways, unit masses)."""
    left = torch.arange(nodes - 1)
    edge_index = torch.stack((torch.cat((left, left + 1)), torch.cat((left + 1, left))))
    return FluxOperatorLayout.from_edges(edge_index, torch.ones(nodes, 1), nodes)


def dynamic_check(source: str, nodes: int = 8, milliseconds: float = 4.0) -> dict[str, Any]:
    """Run inside the sandbox: build the model, check its rates, integrate and differentiate.

    Returns plain data ``{"accepted", "rule", "message", "line", "traceback",
    "parameter_count"}``; exceptions of the edited code propagate to the worker, which trims
    their traceback to the edited source.
    """
    torch.manual_seed(0)
    try:
        cls = load_reaction_class(source, EDITED_REACTION_FILENAME)
    except ReactionSourceError as exc:
        if exc.__cause__ is not None:
            raise exc.__cause__ from None
        raise
    count: int | None = None

    def refuse(rule: str, message: str) -> dict[str, Any]:
        code = getattr(getattr(cls, "rates", None), "__code__", None)
        line = (
            code.co_firstlineno if code and code.co_filename == EDITED_REACTION_FILENAME else None
        )
        return {
            "accepted": False,
            "rule": rule,
            "message": message,
            "line": line if rule != "declaration" else None,
            "traceback": None,
            "parameter_count": count,
        }

    problem = _declaration_problem(cls)
    if problem:
        return refuse("declaration", f"{cls.__name__}: {problem}")
    started = time.perf_counter()
    model = cls(learnable=True)
    count = sum(int(p.numel()) for p in model.parameters())
    names = tuple(model.state_names)
    r, rest = len(names), tuple(float(v) for v in model.resting_state)
    p = model.physical_parameters()
    with torch.no_grad():
        u = torch.full((nodes, 1), rest[0])
        w = torch.tensor(rest[1:]).view(r, 1, 1).expand(r, nodes, 1).clone()
        out = model.rates(u, w, p)
        problem_at = _rates_problem(out, r, nodes)
        if problem_at:
            return refuse(problem_at[0], f"at the resting state: {problem_at[1]}")
        failure = _first_nonfinite(u, w, out[0], out[1], names)
        if failure:
            return refuse("rates-nonfinite", f"at the resting state: {failure}")
        scale = float(p["time_scale"])
        drift = [float(out[0].abs().max()) * scale] + [
            float(out[1][k].abs().max()) * scale for k in range(r)
        ]
        worst = max(range(1 + r), key=lambda k: drift[k])
        if drift[worst] > REST_TOLERANCE_PER_MS:
            variable = ("u", *names)[worst]
            return refuse(
                "rest-drift",
                f"the resting state {rest} is not an equilibrium: d{variable}/dt = "
                f"{drift[worst]:.3g} per ms there (at most {REST_TOLERANCE_PER_MS:g}); make "
                "resting_state a fixed point of rates (a model that leaves rest by itself "
                "excites the tissue without a stimulus)",
            )
        grid_u, grid_w = _grid(rest)
        out = model.rates(grid_u, grid_w, p)
        problem_at = _rates_problem(out, r, len(grid_u))
        if problem_at:
            return refuse(problem_at[0], f"on a grid of states: {problem_at[1]}")
        failure = _first_nonfinite(grid_u, grid_w, out[0], out[1], names)
        if failure:
            return refuse(
                "rates-nonfinite",
                f"on the grid of physiological states (u in [-0.1, 1.2], recovery variables "
                f"in [min(0, rest), max(1, rest)]): {failure}",
            )
    layout = _cable(nodes)
    dt = 0.2
    plan = SegmentPlan(
        frames=max(1, round(milliseconds / (2 * dt))),
        steps_per_frame=2,
        dt=dt,
        substeps=model.reaction_substeps(dt),
    )
    u = torch.full((nodes, 1), rest[0])
    u[: max(1, nodes // 4)] = 0.8  # a stimulus at one end
    values = layout.values(torch.full((2 * (nodes - 1),), 0.5))
    frames, w_end = integrate_segment(model, layout, plan, u, w, values, p)
    if not (bool(torch.isfinite(frames).all()) and bool(torch.isfinite(w_end).all())):
        return refuse(
            "integration-nonfinite",
            f"integrating a stimulated cable of {nodes} nodes for {milliseconds:g} ms (Euler, "
            f"sub-step {dt / plan.substeps:.3g} ms) gave NaN/Inf",
        )
    generator = torch.Generator().manual_seed(1)
    loss = (frames * torch.randn(frames.shape, generator=generator)).sum() + (
        w_end * torch.randn(w_end.shape, generator=generator)
    ).sum()
    loss.backward()
    parameters = {n: t for n, t in model.named_parameters() if t.requires_grad}
    grads = {n: t.grad for n, t in parameters.items()}
    if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads.values()):
        bad = [n for n, g in grads.items() if g is not None and not bool(torch.isfinite(g).all())]
        return refuse("gradient-nonfinite", f"NaN/Inf gradient for {', '.join(bad)}")
    reached = [n for n, g in grads.items() if g is not None and bool((g != 0).any())]
    physics = [n for n in parameters if n != "raw_time_scale"]
    if not reached or (physics and not any(n in reached for n in physics)):
        return refuse(
            "no-gradient",
            f"none of the model's parameters ({', '.join(physics) or 'time_scale'}) receives a "
            "gradient through the integrated trajectory: do the rates use p[...]?",
        )
    missed = [n.removeprefix("raw_") for n in parameters if n not in reached]
    elapsed = time.perf_counter() - started
    return {
        "accepted": True,
        "rule": None,
        "message": (
            f"accepted: {cls.__name__} with {r} recovery variable(s) ({', '.join(names)}); "
            f"rates finite at rest (drift {drift[worst]:.2g} per ms) and on {len(grid_u)} "
            f"states; {plan.frames * plan.steps_per_frame * plan.substeps} integrator sub-steps "
            f"finite; gradients reach {len(reached)} of {len(parameters)} parameter tensors"
            + (f" (none yet for {', '.join(missed)})" if missed else "")
            + f"; {elapsed * 1000:.0f} ms"
        ),
        "line": None,
        "traceback": None,
        "parameter_count": count,
    }


def validate_reaction_source(
    source: str, timeout_s: float = 20.0, limits: SandboxLimits | None = None
) -> ValidationReport:
    """Check edited reaction ``source``: static rules, then a sandboxed trial run.

    Never raises for a bad source: the report says why it was refused, with the rule, the
    line and a traceback trimmed to the edited code. Only :class:`SandboxError` with reason
    ``unsupported`` (no POSIX) propagates.
    """
    return run_code_trial(
        source,
        "reaction",
        dynamic_check,
        (source,),
        limits or SandboxLimits(),
        timeout_s,
        traceback_in_message=True,
    )
