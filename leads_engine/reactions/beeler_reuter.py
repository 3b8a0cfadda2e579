"""Beeler-Reuter 1977 ventricular model, normalised to ``u`` in 0..1 (generator only)."""

from __future__ import annotations

import math

import torch

from .base import ParameterRange, ReactionModel

#: Resting potential (mV) of the model at its default parameters (steady state of one cell).
V_REST = -84.574
#: Millivolts per unit of the normalised ``u``: ``V = V_REST + V_SPAN u`` (peak of the
#: upstroke about ``u = 1``, the plateau's dome about 0.8).
V_SPAN = 120.0

#: Coefficients ``(C1, ..., C7)`` of the gate rate functions, Beeler and Reuter's Table 1:
#: ``rate(V) = (C1 exp(C2 (V + C3)) + C4 (V + C5)) / (exp(C6 (V + C3)) + C7)``.
_RATES: dict[str, tuple[float, float, float, float, float, float, float]] = {
    "alpha_x1": (0.0005, 0.083, 50.0, 0.0, 0.0, 0.057, 1.0),
    "beta_x1": (0.0013, -0.06, 20.0, 0.0, 0.0, -0.04, 1.0),
    "beta_m": (40.0, -0.056, 72.0, 0.0, 0.0, 0.0, 0.0),
    "alpha_h": (0.126, -0.25, 77.0, 0.0, 0.0, 0.0, 0.0),
    "beta_h": (1.7, 0.0, 22.5, 0.0, 0.0, -0.082, 1.0),
    "alpha_j": (0.055, -0.25, 78.0, 0.0, 0.0, -0.2, 1.0),
    "beta_j": (0.3, 0.0, 32.0, 0.0, 0.0, -0.1, 1.0),
    "alpha_d": (0.095, -0.01, -5.0, 0.0, 0.0, -0.072, 1.0),
    "beta_d": (0.07, -0.017, 44.0, 0.0, 0.0, 0.05, 1.0),
    "alpha_f": (0.012, -0.008, 28.0, 0.0, 0.0, 0.15, 1.0),
    "beta_f": (0.0065, -0.02, 30.0, 0.0, 0.0, -0.2, 1.0),
}
_GATES = ("m", "h", "j", "d", "f", "x1")


def _rate(name: str, v: torch.Tensor) -> torch.Tensor:
    c1, c2, c3, c4, c5, c6, c7 = _RATES[name]
    numerator = c1 * torch.exp(c2 * (v + c3))
    if c4:
        numerator = numerator + c4 * (v + c5)
    return numerator / (torch.exp(c6 * (v + c3)) + c7)


def _alpha_m(v: torch.Tensor) -> torch.Tensor:
    """``alpha_m = -(V + 47) / (exp(-0.1 (V + 47)) - 1)``, its removable 0/0 at -47 mV
    replaced by the limit 10."""
    x = v + 47.0
    safe = torch.where(x.abs() < 1e-4, torch.full_like(x, 1e-4), x)
    return torch.where(x.abs() < 1e-4, torch.full_like(x, 10.0), -safe / torch.expm1(-0.1 * safe))


def _rush_larsen(
    y: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, dt: torch.Tensor | None
) -> torch.Tensor:
    """Rate of a Hodgkin-Huxley gate ``dy/dtau = alpha (1 - y) - beta y``.

    With ``dt`` (native time units) the rate is the Rush-Larsen one written for an explicit
    Euler step: ``(y_inf - y) (1 - exp(-dt / tau_y)) / dt``, so ``y + dt * rate`` is the gate's
    exact exponential update at frozen ``V``. It tends to the plain rate as ``dt -> 0``.
    """
    rate = alpha + beta
    y_inf = alpha / rate
    if dt is None:
        return (y_inf - y) * rate
    return (y_inf - y) * (-torch.expm1(-rate * dt)) / dt


class BeelerReuter(ReactionModel):
    r"""Beeler-Reuter 1977 mammalian ventricular action potential (8 state variables).

    .. math::
        C_m \frac{dV}{dt} &= -(I_{K1} + I_{x1} + I_{Na} + I_s), \qquad C_m = 1\,\mu F/cm^2 \\
        I_{Na} &= (g_{Na} m^3 h j + g_{NaC}) (V - E_{Na}) \\
        I_s &= g_s\, d\, f\, (V - E_s), \qquad E_s = -82.3 - 13.0287 \ln [Ca]_i \\
        I_{x1} &= g_{x1}\, x_1\, \frac{e^{0.04 (V + 77)} - 1}{e^{0.04 (V + 35)}} \\
        I_{K1} &= g_{K1} \Big(\frac{4 (e^{0.04 (V + 85)} - 1)}{e^{0.08 (V + 53)}
                  + e^{0.04 (V + 53)}} + \frac{0.2 (V + 23)}{1 - e^{-0.04 (V + 23)}}\Big) \\
        \frac{d[Ca]_i}{dt} &= -10^{-7} I_s + 0.07 (10^{-7} - [Ca]_i) \\
        \frac{dy}{dt} &= \alpha_y(V) (1 - y) - \beta_y(V)\, y, \qquad y \in \{m, h, j, d, f, x_1\}

    with the rate functions of Beeler and Reuter's Table 1 (``_RATES``). ``V`` in mV, time in
    ms, currents in uA/cm^2. Defaults: ``g_na = 4``, ``g_nac = 0.003``, ``e_na = 50``,
    ``g_s = 0.09``, ``g_x1 = 0.8``, ``g_k1 = 0.35`` (mS/cm^2), ``time_scale = 1`` (native ms).

    Normalisation: ``u = (V - V_rest) / 120 mV`` with ``V_rest = -84.574 mV``, so rest is
    ``u = 0`` and the spike peaks near ``u = 1``; ``du/dt = -I_ion / (120 C_m)``. The calcium
    state is ``c = 10^7 [Ca]_i`` (1.78 at rest). The action potential is a spike and dome
    of about 280 ms (90% repolarisation) at 1 Hz.

    Stiffness: the sodium activation ``m`` has a time constant down to about 0.01 ms, far
    below the generator's 0.05 ms step. Set :attr:`rush_larsen_step_ms` to the integration
    step and every gate's rate becomes the Rush-Larsen rate (:func:`_rush_larsen`), for which
    one explicit Euler step is the exact exponential update of the gate.

    Source: G. W. Beeler and H. Reuter, "Reconstruction of the action potential of ventricular
    myocardial fibres", J. Physiol. 268:177-210, 1977.

    Not in the search catalog: data sets made with it have a truth no catalog structure holds.
    """

    name = "beeler_reuter"
    state_names = ("m", "h", "j", "d", "f", "x1", "c")
    # steady state of one cell after 3 s at rest (V = -84.574 mV)
    resting_state = (0.0, 0.010982, 0.987721, 0.974838, 0.002971, 0.999981, 0.005629, 1.782007)
    parameter_ranges = {
        "g_na": ParameterRange(4.0, 0.5, 20.0, log=True, description="fast sodium (mS/cm^2)"),
        "g_nac": ParameterRange(0.003, 1e-4, 0.03, log=True, description="sodium leak"),
        "e_na": ParameterRange(50.0, 20.0, 80.0, description="sodium reversal (mV)"),
        "g_s": ParameterRange(0.09, 0.01, 0.5, log=True, description="slow inward (mS/cm^2)"),
        "g_x1": ParameterRange(0.8, 0.1, 4.0, log=True, description="time-dependent outward"),
        "g_k1": ParameterRange(0.35, 0.05, 2.0, log=True, description="inward rectifier"),
    }
    time_scale_range = ParameterRange(1.0, 0.1, 10.0, log=True)

    def __init__(self, learnable: bool = True, **values: float) -> None:
        super().__init__(learnable=learnable, **values)
        #: Integration step (ms of data time) the Rush-Larsen gate rates are written for;
        #: ``None``: plain gate rates (explicit Euler needs steps under about 0.01 ms then).
        self.rush_larsen_step_ms: float | None = None

    def currents(
        self, v: torch.Tensor, gates: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The four ionic currents (uA/cm^2) at potential ``v`` (mV) and state ``gates``."""
        m, h, j, d, f, x1, c = gates
        i_na = (p["g_na"] * m**3 * h * j + p["g_nac"]) * (v - p["e_na"])
        e_s = -82.3 - 13.0287 * (torch.log(c.clamp_min(1e-6)) - 7.0 * math.log(10.0))
        i_s = p["g_s"] * d * f * (v - e_s)
        i_x1 = p["g_x1"] * x1 * torch.expm1(0.04 * (v + 77.0)) * torch.exp(-0.04 * (v + 35.0))
        shifted = v + 23.0
        safe = torch.where(shifted.abs() < 1e-4, torch.full_like(v, 1e-4), shifted)
        rectifier = torch.where(
            shifted.abs() < 1e-4, torch.full_like(v, 5.0), 0.2 * safe / -torch.expm1(-0.04 * safe)
        )
        i_k1 = p["g_k1"] * (
            4.0
            * torch.expm1(0.04 * (v + 85.0))
            / (torch.exp(0.08 * (v + 53.0)) + torch.exp(0.04 * (v + 53.0)))
            + rectifier
        )
        return {"i_na": i_na, "i_s": i_s, "i_x1": i_x1, "i_k1": i_k1}

    def rates(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v = V_REST + V_SPAN * u
        currents = self.currents(v, w, p)
        du = -(currents["i_na"] + currents["i_s"] + currents["i_x1"] + currents["i_k1"]) / V_SPAN
        dt = None
        if self.rush_larsen_step_ms is not None:
            dt = self.rush_larsen_step_ms * p["time_scale"]
        alphas = {
            "m": _alpha_m(v),
            "h": _rate("alpha_h", v),
            "j": _rate("alpha_j", v),
            "d": _rate("alpha_d", v),
            "f": _rate("alpha_f", v),
            "x1": _rate("alpha_x1", v),
        }
        gate_rates = [
            _rush_larsen(w[k], alphas[g], _rate(f"beta_{g}", v), dt) for k, g in enumerate(_GATES)
        ]
        dc = -currents["i_s"] + 0.07 * (1.0 - w[6])
        return du, torch.stack((*gate_rates, dc))
