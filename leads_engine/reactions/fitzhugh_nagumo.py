"""FitzHugh-Nagumo model in the normalised cardiac form."""

from __future__ import annotations

import torch

from .base import ParameterRange, ReactionModel


class FitzHughNagumo(ReactionModel):
    r"""FitzHugh-Nagumo excitable medium, cubic excitation and linear recovery.

    .. math::
        \frac{du}{d\tau} = c_1\,u\,(u-a)\,(1-u) - c_2\,v, \qquad
        \frac{dv}{d\tau} = b\,(u - d\,v)

    The linear recovery current drives ``u`` below rest after the action potential (a
    hyperpolarising undershoot that cardiac cells do not show).

    Sources: R. FitzHugh, Biophys. J. 1:445-466, 1961; J. Nagumo, S. Arimoto and S. Yoshizawa,
    Proc. IRE 50:2061-2070, 1962; normalised form and parameters as in Rogers and McCulloch,
    IEEE Trans. Biomed. Eng. 41(8):743-757, 1994.

    Defaults: ``a = 0.13``, ``b = 0.01``, ``c1 = 0.5``, ``c2 = 0.1``, ``d = 0.5``; one model
    time unit is taken as 0.5 ms (``time_scale = 2``), as for Rogers-McCulloch.

    Rogers and McCulloch's FitzHugh-Nagumo set (``b = 0.013``, ``c1 = 0.26``, ``d = 1``) does
    not propagate on the bundled mesh at its conductivities: the paced patch recovers before
    it excites its neighbours (3% of the nodes activate). The stronger excitation ``c1 = 0.5``
    and slower recovery ``b = 0.01`` give a wave reaching every node (total activation about
    110 ms, 60 ms above u = 0.5 per node), with margin: ``c1`` from 0.4 to 0.6, ``b`` from
    0.006 to 0.02 and ``d`` from 0.5 to 0.6 all still activate every node. ``d = 0.5`` keeps
    the medium monostable (a single rest state): an excited state exists only if
    ``d > c2 / (c1 max_u (u - a)(1 - u))``, about 1.06 here.
    """

    name = "fitzhugh_nagumo"
    state_names = ("v",)
    resting_state = (0.0, 0.0)
    parameter_ranges = {
        "a": ParameterRange(0.13, 0.02, 0.4, description="excitation threshold"),
        "b": ParameterRange(0.01, 1e-3, 0.1, log=True, description="recovery rate"),
        "c1": ParameterRange(0.5, 0.03, 2.0, log=True, description="excitation gain"),
        "c2": ParameterRange(0.1, 0.01, 1.0, log=True, description="recovery coupling"),
        "d": ParameterRange(0.5, 0.2, 5.0, log=True, description="recovery decay"),
    }
    time_scale_range = ParameterRange(2.0, 0.1, 40.0, log=True)

    def rates(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v = w[0]
        du = p["c1"] * u * (u - p["a"]) * (1 - u) - p["c2"] * v
        dv = p["b"] * (u - p["d"] * v)
        return du, dv.unsqueeze(0)
