"""Training and evaluation of one candidate: ``fit(spec, dataset)`` and ``evaluate``.

The loss is the mean squared error of the observed quantity over the predicted frames: the
data set names its observation operator (:func:`~leads_engine.observation.observation_for`:
TMP itself, a lead field ``H u`` or the TMP at contact nodes, optionally standardised per
electrode). A recording without TMP starts each rollout from its pacing sites
(:meth:`EPDataset.initial_tmp`). Adam with gradient-norm clipping, per-epoch train and
validation loss, the best epoch's weights kept, early stopping on the validation loss, and a
readable diagnosis. A candidate whose integration blows up is returned with
``status="unstable"`` and the epoch and step of the failure; it never raises to the caller.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from .dataset import EPDataset
from .diagnosis import (  # noqa: F401  (re-exported: the diagnosis used to live here)
    CAPTURES_THE_WAVE,
    FAR_ABOVE_FLOOR,
    FLOOR_SHARE,
    GOOD_FIT_EXPLAINED,
    PLATEAU_GAIN,
    WAVEFRONT_BLAME,
    CatalogGap,
    Diagnosis,
    Status,
    diagnose,
)
from .diffusion import template_info
from .graph import MeshGraph
from .hybrid import HybridModel
from .metrics import ActivationError, ErrorStructure, activation_times, at_mae, error_structure
from .observation import (
    ObservationOperator,
    electrode_correlation,
    electrode_nodes,
    observation_for,
)
from .reactions.residual import (
    ResidualReaction,
    VisitedState,
    residual_penalty,
    residual_share,
)
from .simulator import SimulationDiverged
from .spec import CandidateSpec


@dataclass(frozen=True)
class TrainingConfig:
    """Numerics and optimisation settings of a fit (defaults: the search's inner loop)."""

    epochs: int = 3
    #: trajectories per optimizer step; ``None``: the diffusion template's catalog
    #: ``batch_size`` (2 for the physical templates, 10 for the neural ones)
    batch_size: int | None = None
    learning_rate: float = 1e-2
    physical_learning_rate: float = 2e-2
    #: Adam step of a hybrid reaction's residual network (``reaction.mlp``): smaller than the
    #: other networks' so the residual grows only where the data keeps asking for it
    residual_learning_rate: float = 3e-3
    #: Adam step of the diffusion's ``raw_`` conductivity parameters; ``None``: the
    #: template's catalog value (0.03 for the physical templates, 0.1 for the neural ones)
    conductivity_learning_rate: float | None = None
    #: every learning rate above times this (a fine-tuning from trained weights may take
    #: smaller steps than the search's fit from scratch)
    learning_rate_scale: float = 1.0
    grad_clip: float = 1.0
    #: learning rates follow a half cosine from their base value down to this fraction of it
    #: over the fit's batches (1.0: constant): large steps first, then settling into the minimum
    final_lr_fraction: float = 0.1
    #: learning rates rise linearly from near zero to their base value over this many epochs'
    #: batches before the cosine takes over (0: none): a fit started from trained weights
    #: (a warm start) meets a loss surface it is already deep in, where full first steps can
    #: throw it out (a residual + anisotropic fit warm-started from its parents at full steps
    #: diverged in its first epoch)
    warmup_epochs: float = 0.0
    steps_per_frame: int = 5
    #: reaction Euler sub-steps per integration step; ``None``: what the reaction model needs
    reaction_substeps: int | None = None
    #: frames over which conductances are held; ``None``: the catalog's ``evaluation``
    conductance_refresh_frames: int | None = None
    checkpoint_frames: int | None = 10
    #: stop after this many epochs without a better validation loss, or after
    #: ``patience_fraction`` of the fit's epochs if that is more: under the cosine schedule a long
    #: fit's first half takes large, noisy steps and its gains come as the rate decays (a
    #: 40-epoch fine-tuning of a hybrid reaction stopped at its 8th epoch with a fixed 5; a
    #: 60-epoch one wandered near its epoch-8 best until a patience of 15 stopped it at epoch 23,
    #: test MSE 5.8e-3, where the same fit run to its end reached 2.9e-3)
    patience: int = 5
    patience_fraction: float = 0.5
    max_abs: float = 10.0
    compile: bool = True
    device: str | None = None
    seed: int | None = None

    def patience_for_fit(self) -> int:
        """Epochs without improvement after which this fit stops (see ``patience``)."""
        return max(self.patience, math.ceil(self.patience_fraction * self.epochs))

    def for_template(self, template: str) -> TrainingConfig:
        """This config with what it leaves open (``None``) taken from the template's catalog
        entry: the settings a fit of that template actually uses."""
        info = template_info(template)
        batch_size, rate = self.batch_size, self.conductivity_learning_rate
        return replace(
            self,
            batch_size=info.batch_size if batch_size is None else batch_size,
            conductivity_learning_rate=info.conductivity_learning_rate if rate is None else rate,
        )

    def torch_device(self) -> torch.device:
        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class TrainingProgress:
    """One progress event: after a batch (``phase="train"``) or an epoch (``"epoch"``)."""

    phase: Literal["train", "epoch"]
    epoch: int
    epochs: int
    batch: int
    batches: int
    train_loss: float | None = None
    val_loss: float | None = None


ProgressCallback = Callable[[TrainingProgress], None]


@dataclass
class FitResult:
    status: Status
    train_losses: list[float]
    val_losses: list[float]
    best_epoch: int | None
    best_val_loss: float | None
    parameter_count: int
    wall_seconds: float
    diagnosis: Diagnosis
    state_dict: dict[str, torch.Tensor] | None
    failure: dict[str, Any] | None = None
    reaction_parameters: dict[str, float] = field(default_factory=dict)
    #: a hybrid reaction's residual: its spec and its share of the reaction over the states of
    #: the best epoch's validation rollout (:func:`residual_share`); None without a residual
    residual: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no weights)."""
        return {
            "status": self.status,
            "train_losses": self.train_losses,
            "val_losses": self.val_losses,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "parameter_count": self.parameter_count,
            "wall_seconds": round(self.wall_seconds, 3),
            "failure": self.failure,
            "reaction_parameters": self.reaction_parameters,
            "residual": self.residual,
            "diagnosis": self.diagnosis.as_dict(),
        }


class GraphCache:
    """Batched graphs of one mesh, built once per batch size."""

    def __init__(self, dataset: EPDataset, device: torch.device) -> None:
        self.mesh = dataset.mesh()
        self.device = device
        self._graphs: dict[int, MeshGraph] = {}

    def __call__(self, batch_size: int) -> MeshGraph:
        if batch_size not in self._graphs:
            self._graphs[batch_size] = MeshGraph.from_mesh(
                self.mesh, batch_size, device=self.device
            )
        return self._graphs[batch_size]


def frame_interval(dataset: EPDataset) -> float:
    steps = np.diff(dataset.t)
    if not np.allclose(steps, steps[0], rtol=1e-6):
        raise ValueError("training needs equally spaced frames")
    return float(steps[0])


def predict(
    model: HybridModel,
    dataset: EPDataset,
    indices: np.ndarray,
    graphs: GraphCache,
    config: TrainingConfig,
    visited: list[VisitedState] | None = None,
) -> torch.Tensor:
    """Predicted TMP ``[len(indices), frames - 1, N]`` after the first (observed) frame;
    ``visited`` collects states along the rollout (:meth:`HybridModel.rollout`)."""
    device = graphs.device
    u0 = torch.from_numpy(dataset.initial_tmp(indices)).to(device)
    return model.rollout(
        u0,
        graphs(len(indices)),
        dataset.n_frames - 1,
        frame_interval(dataset),
        config.steps_per_frame,
        config.checkpoint_frames,
        config.max_abs,
        config.reaction_substeps,
        visited,
    )


def _optimizer(model: HybridModel, config: TrainingConfig) -> torch.optim.Optimizer:
    """Adam with larger steps for the physical parameters: reaction and conductivities.

    Bounded physical values are stored as ``raw_<name>`` (reaction parameters, conductivity
    levels and maps): the reaction's get ``physical_learning_rate``, the diffusion's
    ``conductivity_learning_rate``, a hybrid reaction's residual ``residual_learning_rate``,
    everything else (network weights) ``learning_rate``; each times ``learning_rate_scale``.
    """
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("reaction.mlp.") and isinstance(model.reaction, ResidualReaction):
            rate = config.residual_learning_rate
        elif not name.rsplit(".", 1)[-1].startswith("raw_"):
            rate = config.learning_rate
        elif name.startswith("diffusion."):
            rate = config.conductivity_learning_rate
        else:
            rate = config.physical_learning_rate
        groups.setdefault(rate * config.learning_rate_scale, []).append(parameter)
    return torch.optim.Adam([{"params": ps, "lr": rate} for rate, ps in groups.items()])


def _learning_rate_factor(
    total_steps: int, final_fraction: float, warmup_steps: int, step: int
) -> float:
    """Learning-rate factor for optimizer step ``step`` of ``total_steps``.

    A linear warm-up ``(step + 1) / (warmup_steps + 1)`` over the first ``warmup_steps`` steps,
    then a half cosine from 1 down to ``final_fraction`` over the remaining ones.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps - 1, 1), 1.0)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def fit(
    spec: CandidateSpec,
    dataset: EPDataset,
    config: TrainingConfig | None = None,
    progress: ProgressCallback | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
    observation: ObservationOperator | None = None,
) -> FitResult:
    """Train the candidate ``spec`` on the data set's train split; select on its val split.

    ``observation`` defaults to the data set's own operator (:func:`observation_for`).
    """
    config = (config or TrainingConfig()).for_template(spec.diffusion)
    if spec.reaction_residual is not None and spec.reaction_residual.learning_rate is not None:
        config = replace(config, residual_learning_rate=spec.reaction_residual.learning_rate)
    device = config.torch_device()
    observation = (observation or observation_for(dataset)).to(device)
    started = time.perf_counter()
    seed = spec.seed if config.seed is None else config.seed
    model = load_model(spec, dataset, initial_state, config).to(device)
    graphs = GraphCache(dataset, device)
    optimizer = _optimizer(model, config)
    train_index = dataset.indices("train")
    val_index = dataset.indices("val")
    if len(val_index) == 0:
        val_index = train_index
    val_targets = observation.targets(dataset, val_index).to(device)
    data_variance = float(val_targets.var())
    shuffler = torch.Generator().manual_seed(seed)
    batch_size = int(config.batch_size)  # resolved by for_template
    batches = math.ceil(len(train_index) / batch_size)
    total_steps = config.epochs * batches
    warmup_steps = min(round(config.warmup_epochs * batches), total_steps - 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        functools.partial(
            _learning_rate_factor, total_steps, config.final_lr_fraction, max(warmup_steps, 0)
        ),
    )

    train_losses: list[float] = []
    val_losses: list[float] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_val = math.inf
    best_epoch: int | None = None
    best_prediction: torch.Tensor | None = None
    failure: dict[str, Any] | None = None
    status: Status = "ok"
    hybrid_reaction = model.reaction if isinstance(model.reaction, ResidualReaction) else None
    penalty = spec.reaction_residual.penalty if spec.reaction_residual is not None else 0.0
    visited: list[VisitedState] | None = [] if hybrid_reaction is not None else None
    residual: dict[str, Any] | None = None
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = train_index[torch.randperm(len(train_index), generator=shuffler).numpy()]
        epoch_loss = 0.0
        try:
            for b in range(batches):
                batch = order[b * batch_size : (b + 1) * batch_size]
                targets = observation.targets(dataset, batch).to(device)
                optimizer.zero_grad(set_to_none=True)
                if visited is not None:
                    visited.clear()
                predicted = predict(model, dataset, batch, graphs, config, visited)
                loss = torch.mean((observation.observe(predicted) - targets) ** 2)
                objective = loss
                if hybrid_reaction is not None and penalty > 0:  # APHYNITY: keep r_phi small
                    objective = loss + penalty * residual_penalty(hybrid_reaction, visited or [])
                if not torch.isfinite(loss):
                    raise SimulationDiverged("non-finite loss", 0, float(dataset.t[-1]))
                objective.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                if not torch.isfinite(grad_norm):
                    raise SimulationDiverged("non-finite gradient", 0, float(dataset.t[-1]))
                optimizer.step()
                schedule.step()
                epoch_loss += float(loss.detach()) * len(batch)
                if progress:
                    progress(
                        TrainingProgress(
                            "train",
                            epoch,
                            config.epochs,
                            b + 1,
                            batches,
                            train_loss=float(loss.detach()),
                        )
                    )
            model.eval()
            with torch.no_grad():
                if visited is not None:
                    visited.clear()
                predicted = predict(model, dataset, val_index, graphs, config, visited)
                val_loss = float(torch.mean((observation.observe(predicted) - val_targets) ** 2))
        except SimulationDiverged as exc:
            status = "unstable"
            failure = {"epoch": epoch, "step": exc.step, "time_ms": exc.time, "reason": exc.reason}
            break
        train_losses.append(epoch_loss / len(train_index))
        val_losses.append(val_loss)
        if progress:
            progress(
                TrainingProgress(
                    "epoch", epoch, config.epochs, batches, batches, train_losses[-1], val_loss
                )
            )
        if val_loss < best_val:
            best_val, best_epoch = val_loss, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_prediction = predicted.detach().cpu()
            if hybrid_reaction is not None and spec.reaction_residual is not None:
                residual = {
                    **spec.reaction_residual.model_dump(),
                    **residual_share(hybrid_reaction, visited or []),
                    "split": "val",
                    "epoch": epoch,
                }
        elif best_epoch is not None and epoch - best_epoch >= config.patience_for_fit():
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    diagnosis = diagnose(
        train_losses,
        val_losses,
        status,
        model.parameter_count(),
        data_variance,
        failure,
        _validation_structure(dataset, val_index, best_prediction, observation),
        _noise_variance(dataset, observation),
    )
    return FitResult(
        status=status,
        train_losses=train_losses,
        val_losses=val_losses,
        best_epoch=best_epoch,
        best_val_loss=None if best_epoch is None else best_val,
        parameter_count=model.parameter_count(),
        wall_seconds=time.perf_counter() - started,
        diagnosis=diagnosis,
        state_dict=copy.deepcopy(best_state),
        failure=failure,
        reaction_parameters=model.reaction.parameter_values(),
        residual=residual,
    )


def _validation_structure(
    dataset: EPDataset,
    indices: np.ndarray,
    predicted: torch.Tensor | None,
    observation: ObservationOperator,
) -> ErrorStructure | None:
    """Wavefront/shape split of the best epoch's validation rollout (TMP data only)."""
    if predicted is None or dataset.u is None or observation.name != "tmp":
        return None
    return error_structure(predicted.numpy(), dataset.u[indices, 1:], dataset.t[1:])


def _noise_variance(dataset: EPDataset, observation: ObservationOperator) -> float:
    """Variance of the observation noise the generator added (TMP data sets), else 0."""
    if observation.name != "tmp":
        return 0.0
    noise = dataset.meta.get("noise_std") or 0.0
    return float(noise) ** 2 if isinstance(noise, (int, float)) else 0.0


@dataclass
class Evaluation:
    """Scores of a trained model on one split.

    ``mse`` is the loss's quantity: the mean squared error of the (normalised) observation,
    i.e. of the TMP for the identity observation. ``at_true`` is the measured activation-time
    map when the data set has one (``at_source="measured"``; per-electrode times are placed at
    the electrodes' nodes, NaN elsewhere), else the AT of the true TMP (``"tmp"``), else all
    NaN (``"none"``). ``egm_correlation`` is the Pearson correlation of predicted and recorded
    signals per electrode, averaged over samples then electrodes (recordings only).
    """

    split: str
    mse: float
    per_sample_mse: list[float]
    activation_error: ActivationError
    at_true: np.ndarray
    at_pred: np.ndarray
    u_pred: np.ndarray = field(repr=False)
    observation: str = "tmp"
    at_source: str = "tmp"
    per_sample_at_mae: list[float] = field(default_factory=list)
    egm_correlation: float | None = None
    egm_correlation_per_electrode: np.ndarray | None = field(default=None, repr=False)
    tmp_mse: float | None = None

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "split": self.split,
            "mse": self.mse,
            "per_sample_mse": self.per_sample_mse,
            "at_mae_ms": self.activation_error.mae,
            **{f"at_{k}": v for k, v in self.activation_error.as_dict().items() if k != "mae"},
        }
        if self.observation != "tmp":
            summary.update(
                observation=self.observation,
                at_source=self.at_source,
                per_sample_at_mae_ms=self.per_sample_at_mae,
                egm_correlation=self.egm_correlation,
                tmp_mse=self.tmp_mse,
            )
        return summary


def load_model(
    spec: CandidateSpec,
    dataset: EPDataset,
    state_dict: dict[str, torch.Tensor] | None,
    config: TrainingConfig | None = None,
) -> HybridModel:
    """The spec's model with ``state_dict`` loaded and the integrator ``config`` asks for."""
    config = config or TrainingConfig()
    model = HybridModel.from_spec(spec, dataset.n_nodes)
    if config.conductance_refresh_frames is not None:
        model.refresh_frames = config.conductance_refresh_frames
    # Compile the integrator step only for catalog code: an edited template is trained inside
    # the sandbox, which forbids the compiler's subprocesses and cache writes.
    model.compile_step = config.compile and not spec.has_edited_code
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def reference_activation_times(
    dataset: EPDataset, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Reference AT map ``[B, N]``, the nodes to compare on (``None``: all) and its source.

    Measured times win over times computed from the data set's TMP; per-electrode measured
    times are placed at each electrode's node (:func:`electrode_nodes`), NaN elsewhere.
    """
    measured = dataset.extras.get("measured_activation_times")
    if measured is not None:
        measured = np.asarray(measured, dtype=np.float64)[indices]
        if measured.shape[1] == dataset.n_nodes:
            return measured, None, "measured"
        nodes = electrode_nodes(dataset)
        assert nodes is not None  # validated: per-electrode times come with positions
        at_map = np.full((len(indices), dataset.n_nodes), np.nan)
        at_map[:, nodes] = measured
        return at_map, nodes, "measured"
    if dataset.u is not None:
        return activation_times(dataset.u[indices], dataset.t), None, "tmp"
    return np.full((len(indices), dataset.n_nodes), np.nan), None, "none"


def evaluate(
    spec: CandidateSpec,
    dataset: EPDataset,
    state_dict: dict[str, torch.Tensor] | None,
    split: str = "test",
    config: TrainingConfig | None = None,
    observation: ObservationOperator | None = None,
) -> Evaluation:
    """Observation MSE, activation times, AT MAE (and EGM correlation) on one split."""
    config = config or TrainingConfig()
    device = config.torch_device()
    observation = observation or observation_for(dataset)
    model = load_model(spec, dataset, state_dict, config).to(device).eval()
    indices = dataset.indices(split)
    graphs = GraphCache(dataset, device)
    with torch.no_grad():
        predicted = predict(model, dataset, indices, graphs, config).cpu()
        squared = (observation.observe(predicted) - observation.targets(dataset, indices)) ** 2
    per_sample = squared.double().mean(dim=(1, 2)).numpy()
    u_pred = np.concatenate([dataset.initial_tmp(indices)[:, None], predicted.numpy()], axis=1)
    at_true, compared_nodes, at_source = reference_activation_times(dataset, indices)
    at_pred = activation_times(u_pred, dataset.t)
    compared = slice(None) if compared_nodes is None else compared_nodes
    per_sample_at = [
        at_mae(at_pred[i, compared], at_true[i, compared]).mae for i in range(len(indices))
    ]
    correlation = None
    if observation.name != "tmp" and hasattr(observation, "raw"):
        with torch.no_grad():
            signals_pred = observation.raw(predicted).numpy()
        correlation = electrode_correlation(
            signals_pred, np.asarray(dataset.extras["signals"])[indices, 1:]
        )
    tmp_mse = None
    if dataset.u is not None:
        tmp_mse = float(((u_pred[:, 1:] - dataset.u[indices, 1:]) ** 2).mean())
    return Evaluation(
        split=split,
        mse=float(per_sample.mean()),
        per_sample_mse=[float(x) for x in per_sample],
        activation_error=at_mae(at_pred[:, compared], at_true[:, compared]),
        at_true=at_true,
        at_pred=at_pred,
        u_pred=u_pred,
        observation=observation.name,
        at_source=at_source,
        per_sample_at_mae=[float(x) for x in per_sample_at],
        egm_correlation=None if correlation is None else float(np.nanmean(correlation)),
        egm_correlation_per_electrode=correlation,
        tmp_mse=tmp_mse,
    )
