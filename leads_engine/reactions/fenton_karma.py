"""Fenton-Karma three-variable model."""

from __future__ import annotations

import torch

from .base import ParameterRange, ReactionModel, smooth_step


class FentonKarma(ReactionModel):
    r"""Fenton-Karma three-variable model: fast inward, slow outward and slow inward currents.

    .. math::
        \frac{du}{dt} &= -(J_{fi} + J_{so} + J_{si}) \\
        J_{fi} &= -\frac{v}{\tau_d}\, p\,(1-u)(u-u_c) \\
        J_{so} &= \frac{u}{\tau_0}(1-p) + \frac{p}{\tau_r} \\
        J_{si} &= -\frac{w}{2\tau_{si}}\big(1 + \tanh(k(u - u_c^{si}))\big) \\
        \frac{dv}{dt} &= (1-p)\frac{1-v}{\tau_v^-(u)} - p\frac{v}{\tau_v^+}, \qquad
        \tau_v^-(u) = q\,\tau_{v1}^- + (1-q)\,\tau_{v2}^- \\
        \frac{dw}{dt} &= (1-p)\frac{1-w}{\tau_w^-} - p\frac{w}{\tau_w^+}

    with ``p = H(u - u_c)`` and ``q = H(u - u_v)``; the Heaviside steps are logistic steps of
    width 0.005 so the model is differentiable. Rest: ``u = 0, v = w = 1``. Shows a plateau
    carried by the slow inward current.

    Sources: F. Fenton and A. Karma, "Vortex dynamics in three-dimensional continuous myocardium
    with fiber rotation: filament instability and fibrillation", Chaos 8(1):20-47, 1998;
    parameter set 3 of F. H. Fenton, E. M. Cherry, H. M. Hastings and S. J. Evans, Chaos
    12(3):852-892, 2002.

    Defaults (ms): ``tau_v_plus = 3.33``, ``tau_v1_minus = 19.6``, ``tau_v2_minus = 1000``,
    ``tau_w_plus = 667``, ``tau_w_minus = 11``, ``tau_d = 0.25``, ``tau_0 = 8.3``,
    ``tau_r = 50``, ``tau_si = 45``, ``k = 10``, ``u_csi = 0.85``, ``u_c = 0.13``,
    ``u_v = 0.055``; ``time_scale = 1``.
    """

    name = "fenton_karma"
    state_names = ("v", "w")
    resting_state = (0.0, 1.0, 1.0)
    parameter_ranges = {
        "tau_v_plus": ParameterRange(3.33, 0.5, 20.0, log=True, description="v closing (ms)"),
        "tau_v1_minus": ParameterRange(19.6, 2.0, 200.0, log=True, description="v opening (ms)"),
        "tau_v2_minus": ParameterRange(1000.0, 50.0, 5000.0, log=True, description="ms"),
        "tau_w_plus": ParameterRange(667.0, 50.0, 3000.0, log=True, description="w closing (ms)"),
        "tau_w_minus": ParameterRange(11.0, 2.0, 200.0, log=True, description="w opening (ms)"),
        "tau_d": ParameterRange(0.25, 0.05, 2.0, log=True, description="fast inward (ms)"),
        "tau_0": ParameterRange(8.3, 1.0, 50.0, log=True, description="slow outward (ms)"),
        "tau_r": ParameterRange(50.0, 5.0, 300.0, log=True, description="repolarising (ms)"),
        "tau_si": ParameterRange(45.0, 5.0, 300.0, log=True, description="slow inward (ms)"),
        "k": ParameterRange(10.0, 1.0, 50.0, log=True, description="slow inward steepness"),
        "u_csi": ParameterRange(0.85, 0.3, 0.99, description="slow inward threshold"),
        "u_c": ParameterRange(0.13, 0.02, 0.4, description="excitation threshold"),
        "u_v": ParameterRange(0.055, 0.005, 0.2, description="v recovery threshold"),
    }
    time_scale_range = ParameterRange(1.0, 0.05, 20.0, log=True)
    max_step_ms = 0.1  # the fast inward current (tau_d = 0.25 ms) is stiff at the 0.4 ms step

    def rates(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v, s = w[0], w[1]
        excited = smooth_step(u - p["u_c"])
        slow_v = smooth_step(u - p["u_v"])
        j_fi = -v / p["tau_d"] * excited * (1 - u) * (u - p["u_c"])
        j_so = u / p["tau_0"] * (1 - excited) + excited / p["tau_r"]
        j_si = -s / (2 * p["tau_si"]) * (1 + torch.tanh(p["k"] * (u - p["u_csi"])))
        du = -(j_fi + j_so + j_si)
        tau_v_minus = slow_v * p["tau_v1_minus"] + (1 - slow_v) * p["tau_v2_minus"]
        dv = (1 - excited) * (1 - v) / tau_v_minus - excited * v / p["tau_v_plus"]
        ds = (1 - excited) * (1 - s) / p["tau_w_minus"] - excited * s / p["tau_w_plus"]
        return du, torch.stack((dv, ds))
