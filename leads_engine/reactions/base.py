"""The shared interface of ionic reaction models.

Every model is a :class:`torch.nn.Module` that maps the local state of a node to its rate of
change. The state is split into the transmembrane potential ``u`` (normalised, rest 0, peak
about 1) and ``n_recovery`` recovery/gating variables ``w``. Shapes follow the simulator's
layout: ``u`` is ``[nodes, batch]`` and ``w`` is ``[n_recovery, nodes, batch]``.

Learnable parameters stay inside their physical ranges by construction: each is stored as an
unconstrained raw value and mapped through a logistic function onto ``(low, high)`` (on a log
scale for rate-like quantities spanning decades). Nothing is clamped after the fact, so the
gradient never dies at a bound.

Every model also has a learnable ``time_scale``: the number of the model's native time units
per millisecond of data time. It is what lets a model fitted to data from another model
stretch its action potential to the observed duration, so structures compete fairly.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class ParameterRange:
    """Default value and admissible open interval of one model parameter."""

    default: float
    low: float
    high: float
    log: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not self.low < self.default < self.high:
            raise ValueError(f"default {self.default} outside ({self.low}, {self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled parameter needs a positive lower bound")

    def to_unit(self, value: float) -> float:
        """Position of ``value`` in the interval, in (0, 1)."""
        if not self.low < value < self.high:
            raise ValueError(
                f"value {value} outside the admissible range ({self.low}, {self.high})"
            )
        if self.log:
            return (math.log(value) - math.log(self.low)) / (
                math.log(self.high) - math.log(self.low)
            )
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        if self.log:
            log_low, log_high = math.log(self.low), math.log(self.high)
            return torch.exp(log_low + (log_high - log_low) * unit)
        return self.low + (self.high - self.low) * unit


def smooth_step(x: torch.Tensor, width: float = 0.005) -> torch.Tensor:
    """Logistic approximation of the Heaviside step H(x), differentiable, of the given width."""
    return torch.sigmoid(x / width)


class ReactionModel(nn.Module, ABC):
    """Base class: bounded learnable parameters, resting state and the rate interface.

    Subclasses declare ``name``, ``state_names`` (recovery variables), ``resting_state``
    (``u`` first) and ``parameter_ranges`` (``time_scale`` is added here), and implement
    :meth:`rates` in the model's native time unit.
    """

    name: ClassVar[str]
    state_names: ClassVar[tuple[str, ...]]
    resting_state: ClassVar[tuple[float, ...]]
    parameter_ranges: ClassVar[dict[str, ParameterRange]]
    time_scale_range: ClassVar[ParameterRange]
    #: Largest explicit Euler step (ms of data time, at the default parameters) that keeps
    #: the model's upstroke accurate, or ``None`` when the integrator's step is small enough.
    #: Stiff models (a fast inward current of ``tau ~ 0.3 ms``) set it; the hybrid integrator
    #: then sub-steps the reaction (:meth:`reaction_substeps`).
    max_step_ms: ClassVar[float | None] = None

    def __init__(self, learnable: bool = True, **values: float) -> None:
        super().__init__()
        ranges = self.all_parameter_ranges()
        unknown = set(values) - set(ranges)
        if unknown:
            raise ValueError(
                f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(ranges)}"
            )
        for key, spec in ranges.items():
            unit = spec.to_unit(float(values.get(key, spec.default)))
            raw = torch.tensor(math.log(unit / (1.0 - unit)), dtype=torch.float32)
            if learnable:
                self.register_parameter(f"raw_{key}", nn.Parameter(raw))
            else:
                self.register_buffer(f"raw_{key}", raw)

    @classmethod
    def all_parameter_ranges(cls) -> dict[str, ParameterRange]:
        return {**cls.parameter_ranges, "time_scale": cls.time_scale_range}

    def reaction_substeps(self, dt: float) -> int:
        """Euler sub-steps of the reaction per integration step ``dt`` (ms): ``dt / max_step_ms``
        rounded up, at least 1."""
        if self.max_step_ms is None:
            return 1
        return max(1, math.ceil(dt / self.max_step_ms - 1e-9))

    @property
    def n_recovery(self) -> int:
        return len(self.state_names)

    def physical_parameters(self) -> dict[str, torch.Tensor]:
        """The constrained parameter values, differentiable with respect to the raw ones."""
        return {
            key: spec.from_unit(torch.sigmoid(getattr(self, f"raw_{key}")))
            for key, spec in self.all_parameter_ranges().items()
        }

    def parameter_values(self) -> dict[str, float]:
        """The current physical parameter values as plain floats (for reports and specs)."""
        with torch.no_grad():
            return {k: float(v) for k, v in self.physical_parameters().items()}

    def initial_state(self, nodes: int, batch: int, **tensor_kwargs) -> torch.Tensor:
        """Resting state ``[1 + n_recovery, nodes, batch]``."""
        rest = torch.tensor(self.resting_state, **tensor_kwargs)
        return rest.view(-1, 1, 1).expand(-1, nodes, batch).clone()

    @abstractmethod
    def rates(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(du/dtau, dw/dtau)`` in the model's native time ``tau`` for parameters ``p``."""

    def forward(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(du/dt, dw/dt)`` per millisecond of data time.

        Pass ``p = self.physical_parameters()`` computed once per integration to avoid
        re-evaluating the parameter maps at every step.
        """
        p = self.physical_parameters() if p is None else p
        du, dw = self.rates(u, w, p)
        return du * p["time_scale"], dw * p["time_scale"]
