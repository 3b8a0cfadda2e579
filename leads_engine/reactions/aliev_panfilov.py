"""Aliev-Panfilov two-variable model."""

from __future__ import annotations

import torch

from .base import ParameterRange, ReactionModel


class AlievPanfilov(ReactionModel):
    r"""Aliev-Panfilov model of cardiac excitation.

    .. math::
        \frac{du}{d\tau} = k\,u\,(1-u)\,(u-a) - u\,v, \qquad
        \frac{dv}{d\tau} = \Big(e + \frac{\mu_1 v}{u + \mu_2}\Big)\,\big(-v - k\,u\,(u - a - 1)\big)

    Source: R. R. Aliev and A. V. Panfilov, "A simple two-variable model of cardiac
    excitation", Chaos, Solitons & Fractals 7(3):293-301, 1996.

    Defaults: ``k = 8``, ``a = 0.15``, ``e = 0.002``, ``mu1 = 0.2``, ``mu2 = 0.3``; one model time
    unit is 12.9 ms (the paper's calibration), so ``time_scale = 1/12.9`` per ms. No plateau:
    a triangular-to-rounded action potential with slow repolarisation, no undershoot.
    """

    name = "aliev_panfilov"
    state_names = ("v",)
    resting_state = (0.0, 0.0)
    parameter_ranges = {
        "k": ParameterRange(8.0, 2.0, 20.0, description="excitability (upstroke gain)"),
        "a": ParameterRange(0.15, 0.02, 0.4, description="excitation threshold"),
        "e": ParameterRange(0.002, 2e-4, 0.02, log=True, description="base recovery rate"),
        "mu1": ParameterRange(0.2, 0.02, 1.0, log=True, description="recovery gain"),
        "mu2": ParameterRange(0.3, 0.03, 1.0, log=True, description="recovery offset"),
    }
    time_scale_range = ParameterRange(1 / 12.9, 0.005, 1.0, log=True)
    max_step_ms = 0.2  # the cubic upstroke (k = 8) is under-resolved at the 0.4 ms step

    def rates(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v = w[0]
        ku = p["k"] * u
        above_threshold = u - p["a"]
        du = ku * (1 - u) * above_threshold - u * v
        recovery_rate = p["e"] + p["mu1"] * v / (u + p["mu2"])
        dv = -recovery_rate * (v + ku * (above_threshold - 1))
        return du, dv.unsqueeze(0)
