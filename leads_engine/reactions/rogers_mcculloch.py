"""Rogers-McCulloch modification of the FitzHugh-Nagumo model."""

from __future__ import annotations

import torch

from .base import ParameterRange, ReactionModel


class RogersMcCulloch(ReactionModel):
    r"""Rogers-McCulloch model: FitzHugh-Nagumo with a recovery current proportional to ``u``.

    .. math::
        \frac{du}{d\tau} = c_1\,u\,(u-a)\,(1-u) - c_2\,u\,v, \qquad
        \frac{dv}{d\tau} = b\,(u - d\,v)

    The ``u v`` coupling removes FitzHugh-Nagumo's hyperpolarising undershoot.

    Source: J. M. Rogers and A. D. McCulloch, "A collocation-Galerkin finite element model of
    cardiac action potential propagation", IEEE Trans. Biomed. Eng. 41(8):743-757, 1994.

    Defaults: ``a = 0.13``, ``b = 0.013``, ``c1 = 0.26``, ``c2 = 0.1``, ``d = 1.0``. The model
    is dimensionless; one model time unit is taken as 0.5 ms (``time_scale = 2``), which gives
    an action potential of about 100 ms.
    """

    name = "rogers_mcculloch"
    state_names = ("v",)
    resting_state = (0.0, 0.0)
    parameter_ranges = {
        "a": ParameterRange(0.13, 0.02, 0.4, description="excitation threshold"),
        "b": ParameterRange(0.013, 1e-3, 0.1, log=True, description="recovery rate"),
        "c1": ParameterRange(0.26, 0.03, 2.0, log=True, description="excitation gain"),
        "c2": ParameterRange(0.1, 0.01, 1.0, log=True, description="recovery coupling"),
        "d": ParameterRange(1.0, 0.2, 5.0, log=True, description="recovery decay"),
    }
    time_scale_range = ParameterRange(2.0, 0.1, 40.0, log=True)

    def rates(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v = w[0]
        du = p["c1"] * u * (u - p["a"]) * (1 - u) - p["c2"] * u * v
        dv = p["b"] * (u - p["d"] * v)
        return du, dv.unsqueeze(0)
