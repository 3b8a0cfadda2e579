"""Mitchell-Schaeffer two-current model."""

from __future__ import annotations

import torch

from .base import ParameterRange, ReactionModel, smooth_step


class MitchellSchaeffer(ReactionModel):
    r"""Mitchell-Schaeffer model: one inward and one outward current, one gate.

    .. math::
        \frac{du}{dt} = \frac{h\,u^2\,(1-u)}{\tau_{in}} - \frac{u}{\tau_{out}}, \qquad
        \frac{dh}{dt} = \begin{cases}
            (1-h)/\tau_{open} & u < v_{gate} \\ -h/\tau_{close} & u \ge v_{gate}
        \end{cases}

    The gate switch is a logistic step of width 0.005 in ``u`` so the model is differentiable.
    Action potential duration is about ``tau_close * ln(tau_out / (4 tau_in))``, with a
    plateau-like slow repolarisation.

    Source: C. C. Mitchell and D. G. Schaeffer, "A two-current model for the dynamics of
    cardiac membrane", Bull. Math. Biol. 65:767-793, 2003.

    Defaults (ms): ``tau_in = 0.3``, ``tau_out = 6``, ``tau_open = 120``, ``tau_close = 150``,
    ``v_gate = 0.13``; ``time_scale = 1``.
    """

    name = "mitchell_schaeffer"
    state_names = ("h",)
    resting_state = (0.0, 1.0)
    parameter_ranges = {
        "tau_in": ParameterRange(0.3, 0.05, 2.0, log=True, description="inward current (ms)"),
        "tau_out": ParameterRange(6.0, 1.0, 30.0, log=True, description="outward current (ms)"),
        "tau_open": ParameterRange(120.0, 20.0, 600.0, log=True, description="gate opening (ms)"),
        "tau_close": ParameterRange(150.0, 20.0, 600.0, log=True, description="gate closing (ms)"),
        "v_gate": ParameterRange(0.13, 0.02, 0.4, description="gate threshold"),
    }
    time_scale_range = ParameterRange(1.0, 0.05, 20.0, log=True)
    max_step_ms = 0.1  # the fast inward current (tau_in = 0.3 ms) is stiff at the 0.4 ms step

    def rates(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = w[0]
        du = h * u * u * (1 - u) / p["tau_in"] - u / p["tau_out"]
        closing = smooth_step(u - p["v_gate"])
        dh = (1 - closing) * (1 - h) / p["tau_open"] - closing * h / p["tau_close"]
        return du, dh.unsqueeze(0)
