"""Error metrics for transmembrane-potential (TMP) trajectories and activation maps.

Conventions used throughout LEADS:

* ``u`` is the normalised TMP in ``[0, 1]`` (0 = rest, 1 = peak of the upstroke).
* A trajectory is an array ``[samples, frames, nodes]``; a single sample may be given as
  ``[frames, nodes]``.  ``t`` holds the frame time stamps in ms, shape ``[frames]``.
* An activation-time (AT) map is ``[samples, nodes]`` (or ``[nodes]``) in ms, with ``NaN``
  for nodes that never activate.  NaNs are kept on purpose: a node that a model fails to
  excite is an error to report, never a value to drop silently.

Every public function accepts numpy arrays and torch tensors.  :func:`trajectory_mse` stays
differentiable for torch inputs (it is usable as a training loss); the activation-time
functions work on detached float64 numpy copies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "ActivationError",
    "ErrorStructure",
    "activation_summary",
    "activation_times",
    "at_mae",
    "error_structure",
    "trajectory_mse",
]


def _to_numpy(x: Any, dtype: type = np.float64) -> np.ndarray:
    """Return ``x`` as a numpy array of ``dtype`` (torch tensors are detached and moved to CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Trajectory error
# --------------------------------------------------------------------------------------------


def trajectory_mse(u_pred: Any, u_true: Any) -> float | torch.Tensor:
    """Mean squared error between two TMP trajectories.

    ``MSE = mean_{s,f,n} (u_pred[s,f,n] - u_true[s,f,n])**2`` over samples, frames and nodes.

    Args:
        u_pred: predicted trajectory, ``[samples, frames, nodes]`` or any shape.
        u_true: reference trajectory with exactly the same shape.

    Returns:
        A 0-d ``torch.Tensor`` (differentiable, on the device/dtype of the torch input) if
        either input is a tensor, otherwise a Python ``float``.

    Raises:
        ValueError: if the shapes differ or the arrays are empty.
    """
    pred_shape = tuple(u_pred.shape) if hasattr(u_pred, "shape") else np.shape(u_pred)
    true_shape = tuple(u_true.shape) if hasattr(u_true, "shape") else np.shape(u_true)
    if pred_shape != true_shape:
        raise ValueError(
            f"trajectory_mse: shape mismatch, u_pred has shape {pred_shape} "
            f"but u_true has shape {true_shape}"
        )
    if int(np.prod(pred_shape)) == 0:
        raise ValueError(f"trajectory_mse: empty trajectories (shape {pred_shape})")

    if isinstance(u_pred, torch.Tensor) or isinstance(u_true, torch.Tensor):
        ref = u_pred if isinstance(u_pred, torch.Tensor) else u_true
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        a = torch.as_tensor(u_pred, dtype=dtype, device=ref.device)
        b = torch.as_tensor(u_true, dtype=dtype, device=ref.device)
        return torch.mean((a - b) ** 2)

    a = _to_numpy(u_pred)
    b = _to_numpy(u_true)
    return float(np.mean((a - b) ** 2))


# --------------------------------------------------------------------------------------------
# Activation times
# --------------------------------------------------------------------------------------------


def activation_times(u: Any, t: Any, threshold: float = 0.5) -> np.ndarray:
    """Local activation time (AT) of every node: first upward crossing of ``threshold``.

    For each sample and node, AT is the first time at which ``u`` crosses ``threshold``
    from below.  With ``k`` the last frame below threshold before the crossing
    (``u[k] < threshold <= u[k+1]``), the crossing time is linearly interpolated::

        AT = t[k] + (threshold - u[k]) / (u[k+1] - u[k]) * (t[k+1] - t[k])

    so AT is not quantised to the frame spacing.  Special cases:

    * a node already at or above threshold at the first frame activates at ``t[0]``
      (it was excited from the start, e.g. a stimulus site);
    * a node that never reaches threshold gets ``NaN``;
    * a downward crossing (repolarisation) never counts as activation.

    Args:
        u: normalised TMP, ``[samples, frames, nodes]`` or ``[frames, nodes]``.
        t: frame time stamps in ms, shape ``[frames]``, strictly increasing.
        threshold: activation threshold on the normalised TMP (default 0.5).

    Returns:
        float64 array ``[samples, nodes]`` (or ``[nodes]`` for a 2-D ``u``), in the units of
        ``t``, with ``NaN`` for non-activating nodes.

    Raises:
        ValueError: if ``u`` is not 2-D/3-D, ``t`` is not 1-D with ``len(t) == frames``,
            ``t`` is not strictly increasing, or ``threshold`` is not finite.
    """
    u_np = _to_numpy(u)
    t_np = _to_numpy(t)
    if u_np.ndim not in (2, 3):
        raise ValueError(
            f"activation_times: u must be [samples, frames, nodes] or [frames, nodes], "
            f"got shape {u_np.shape}"
        )
    single = u_np.ndim == 2
    if single:
        u_np = u_np[None]
    n_frames = u_np.shape[1]
    if t_np.ndim != 1 or t_np.shape[0] != n_frames:
        raise ValueError(
            f"activation_times: t must have shape [frames] = [{n_frames}], got {t_np.shape}"
        )
    if n_frames == 0:
        raise ValueError("activation_times: u has no frames")
    if not np.all(np.isfinite(t_np)) or np.any(np.diff(t_np) <= 0):
        raise ValueError("activation_times: t must be finite and strictly increasing")
    if not np.isfinite(threshold):
        raise ValueError(f"activation_times: threshold must be finite, got {threshold}")

    above = u_np >= threshold  # [S, F, N]; NaN compares False, i.e. "not activated"
    at = np.full((u_np.shape[0], u_np.shape[2]), np.nan, dtype=np.float64)

    if n_frames > 1:
        # Upward crossing between frames k and k+1: below at k, at/above at k+1.
        rising = above[:, 1:, :] & ~above[:, :-1, :]  # [S, F-1, N]
        has_rise = rising.any(axis=1)  # [S, N]
        k = rising.argmax(axis=1)  # first rising interval (0 where there is none)
        u_k = np.take_along_axis(u_np, k[:, None, :], axis=1)[:, 0, :]
        u_k1 = np.take_along_axis(u_np, (k + 1)[:, None, :], axis=1)[:, 0, :]
        # u_k < threshold <= u_k1 wherever has_rise, so the denominator is positive there.
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = (threshold - u_k) / (u_k1 - u_k)
        t_k = t_np[k]
        t_cross = t_k + frac * (t_np[k + 1] - t_k)
        at = np.where(has_rise, t_cross, at)

    at = np.where(above[:, 0, :], t_np[0], at)
    return at[0] if single else at


@dataclass(frozen=True)
class ActivationError:
    """Comparison of a predicted and a reference activation-time map.

    Attributes:
        mae: mean absolute AT error (ms) over the ``n_compared`` nodes that activate in both
            maps; ``NaN`` if there are none.
        n_compared: number of (sample, node) entries activated in both maps.
        n_missing_pred: entries activated in the truth but not in the prediction
            (the model failed to excite tissue that should activate).
        n_missing_true: entries activated in the prediction but not in the truth
            (the model excited tissue that should stay at rest).
    """

    mae: float
    n_compared: int
    n_missing_pred: int
    n_missing_true: int

    @property
    def missed_fraction(self) -> float:
        """Share of the truly activated entries the prediction never activates (``mae`` is
        over the entries activated in both, so a model without a wave has a small ``mae``)."""
        activated = self.n_compared + self.n_missing_pred
        return self.n_missing_pred / activated if activated else 0.0

    def as_dict(self) -> dict[str, float | int]:
        """Plain ``dict`` of the fields (e.g. for JSON logging)."""
        return asdict(self)


def at_mae(at_pred: Any, at_true: Any) -> ActivationError:
    """Mean absolute activation-time error, with explicit counts of mismatched activation.

    ``mae = mean |at_pred - at_true|`` over entries finite in both maps.  Entries that
    activate in only one map are not averaged (their error is undefined) but counted in
    :attr:`ActivationError.n_missing_pred` / :attr:`ActivationError.n_missing_true`.

    Args:
        at_pred: predicted ATs, ``[samples, nodes]`` or ``[nodes]``, ``NaN`` = not activated.
        at_true: reference ATs with the same shape.

    Raises:
        ValueError: if the shapes differ.
    """
    pred = _to_numpy(at_pred)
    true = _to_numpy(at_true)
    if pred.shape != true.shape:
        raise ValueError(
            f"at_mae: shape mismatch, at_pred has shape {pred.shape} "
            f"but at_true has shape {true.shape}"
        )
    act_pred = np.isfinite(pred)
    act_true = np.isfinite(true)
    both = act_pred & act_true
    n_compared = int(both.sum())
    mae = float(np.mean(np.abs(pred[both] - true[both]))) if n_compared else float("nan")
    return ActivationError(
        mae=mae,
        n_compared=n_compared,
        n_missing_pred=int((act_true & ~act_pred).sum()),
        n_missing_true=int((act_pred & ~act_true).sum()),
    )


def activation_summary(at: Any) -> dict[str, float | int]:
    """Summary statistics of an activation-time map.

    Definitions (per sample ``s``, over its nodes):

    * fraction activated ``= #finite AT / #nodes``;
    * total activation time (TAT) ``= max(AT) - min(AT)`` over activated nodes, i.e. the
      time the wave needs to excite all the tissue it reaches (ms).

    Args:
        at: ATs ``[samples, nodes]`` or ``[nodes]``, ``NaN`` = not activated.

    Returns:
        dict with keys

        * ``n_samples``, ``n_nodes``;
        * ``fraction_activated_min``: worst-case (minimum over samples) fraction activated;
        * ``fraction_activated_mean``: mean over samples of the fraction activated;
        * ``total_activation_time_mean``: mean TAT over samples that activate at all
          (``NaN`` if none does);
        * ``n_not_activated``: number of non-activating (sample, node) entries in total.
    """
    a = _to_numpy(at)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"activation_summary: at must be [samples, nodes], got {a.shape}")
    activated = np.isfinite(a)
    fraction = activated.mean(axis=1)
    any_act = activated.any(axis=1)
    if any_act.any():
        sub = a[any_act]
        tat = np.nanmax(sub, axis=1) - np.nanmin(sub, axis=1)
        tat_mean = float(tat.mean())
    else:
        tat_mean = float("nan")
    return {
        "n_samples": int(a.shape[0]),
        "n_nodes": int(a.shape[1]),
        "fraction_activated_min": float(fraction.min()),
        "fraction_activated_mean": float(fraction.mean()),
        "total_activation_time_mean": tat_mean,
        "n_not_activated": int((~activated).sum()),
    }


# --------------------------------------------------------------------------------------------
# Where the error sits: the wave's timing or the action potential's shape
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorStructure:
    r"""A trajectory error split into the wave's timing and the action potential's shape.

    Each node's predicted trace is shifted in time so that its activation coincides with the
    true one, ``u_aligned(t) = u_pred(t + AT_pred - AT_true)``; what the shift removes is the
    *timing* (wavefront) error, where and when the wave arrives, the diffusion's job; what
    remains is the *shape* error (upstroke, plateau, repolarisation, rest), the reaction's:

    .. math::
        \text{shape} = \overline{(u_{aligned} - u_{true})^2}, \qquad
        \text{wavefront} = \overline{(u_{pred} - u_{true})^2} - \text{shape}

    (clipped to ``[0, mse]``). A node activated in one map only (the wave never arrives, or
    arrives where it should not) counts wholly as wavefront error; one activated in neither
    counts as shape (its resting level).

    Attributes:
        mse: total mean squared error, ``wavefront_mse + shape_mse``.
        wavefront_mse: the part of the MSE that aligning the activations removes.
        shape_mse: the rest.
        wavefront_share: ``wavefront_mse / mse`` (0 when ``mse`` is 0).
        at_mae_ms: activation-time MAE over entries activated in both maps (NaN if none).
        at_missed_fraction: share of truly activated entries the prediction never activates.
    """

    mse: float
    wavefront_mse: float
    shape_mse: float
    wavefront_share: float
    at_mae_ms: float
    at_missed_fraction: float

    @property
    def shape_share(self) -> float:
        return 1.0 - self.wavefront_share if self.mse > 0 else 0.0

    def as_dict(self) -> dict[str, float | None]:
        """Plain ``dict`` of the fields and ``shape_share`` (JSON-friendly: NaN becomes None)."""
        values = {**asdict(self), "shape_share": self.shape_share}
        return {k: (v if np.isfinite(v) else None) for k, v in values.items()}


def _shifted(u: np.ndarray, shift: np.ndarray, step: float) -> np.ndarray:
    """``u [S, F, N]`` resampled at ``t + shift [S, N]`` (ms; linear, held at the ends)."""
    frames = u.shape[1]
    position = (np.arange(frames)[None, :, None] * step + shift[:, None, :]) / step
    position = np.clip(position, 0.0, frames - 1.0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, frames - 1)
    frac = position - low
    u_low = np.take_along_axis(u, low, axis=1)
    u_high = np.take_along_axis(u, high, axis=1)
    return u_low + frac * (u_high - u_low)


def error_structure(u_pred: Any, u_true: Any, t: Any) -> ErrorStructure:
    """Split the trajectory error of ``u_pred`` against ``u_true`` into timing and shape.

    Args:
        u_pred, u_true: ``[samples, frames, nodes]`` (or ``[frames, nodes]``), same shape.
        t: frame times (ms), ``[frames]``, equally spaced.

    See :class:`ErrorStructure` for the definitions.
    """
    pred = _to_numpy(u_pred)
    true = _to_numpy(u_true)
    if pred.shape != true.shape:
        raise ValueError(f"error_structure: shape mismatch {pred.shape} vs {true.shape}")
    if pred.ndim == 2:
        pred, true = pred[None], true[None]
    times = _to_numpy(t)
    step = float(times[1] - times[0]) if len(times) > 1 else 1.0
    at_pred = activation_times(pred, times)
    at_true = activation_times(true, times)
    both = np.isfinite(at_pred) & np.isfinite(at_true)
    one = np.isfinite(at_pred) ^ np.isfinite(at_true)
    aligned = _shifted(pred, np.where(both, at_pred - at_true, 0.0), step)
    squared = (pred - true) ** 2
    aligned_squared = np.where(one[:, None, :], 0.0, (aligned - true) ** 2)
    aligned_squared = np.minimum(aligned_squared.mean(axis=1), squared.mean(axis=1))
    total = float(squared.mean())
    shape = min(float(aligned_squared.mean()), total)
    error = at_mae(at_pred, at_true)
    return ErrorStructure(
        mse=total,
        wavefront_mse=total - shape,
        shape_mse=shape,
        wavefront_share=(total - shape) / total if total > 0 else 0.0,
        at_mae_ms=error.mae,
        at_missed_fraction=error.missed_fraction,
    )
