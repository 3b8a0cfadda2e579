"""The predicted beat the viewer plays: a trained candidate rolled out on one sample, in a worker
process (edited code only ever runs locked down, as in training), cached next to its figures.

The rollout is what ``evaluate_candidate`` does for a whole split, for one beat: the model
from its spec and weights, the data set's first frame as the initial state, the predicted
potential for the remaining frames (``u_pred [frames, nodes]``, the first frame observed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from leads_engine.sandbox import SandboxError, Worker

from ..errors import DiscoveryError
from ..jobs import JobLimits, _die_with_parent, _load_state, _lock_down

__all__ = ["CACHE_NAME", "predicted_beat", "rollout_sample"]

#: the cached prediction, in the candidate's run folder
CACHE_NAME = "viewer_prediction.npz"


def rollout_sample(
    channel: Any, spec_json: str, dataset_path: str, weights: bytes, sample: int
) -> dict[str, Any]:
    """Worker side: the predicted potential of ``sample`` as float32 bytes and its shape."""
    import torch

    _die_with_parent()
    from leads_engine.dataset import load_dataset
    from leads_engine.spec import CandidateSpec
    from leads_engine.training import GraphCache, TrainingConfig, load_model, predict

    torch.set_num_threads(1)
    spec = CandidateSpec.model_validate_json(spec_json)
    dataset = load_dataset(dataset_path)
    state = _load_state(weights)
    if spec.has_edited_code:
        _lock_down(channel, 1)
    config = TrainingConfig(compile=False)
    device = config.torch_device()
    model = load_model(spec, dataset, state, config).to(device).eval()
    indices = np.array([sample])
    with torch.no_grad():
        predicted = predict(model, dataset, indices, GraphCache(dataset, device), config).cpu()
    u_pred = np.concatenate([dataset.initial_tmp(indices), predicted.numpy()[0]], axis=0)
    u_pred = np.ascontiguousarray(u_pred, dtype=np.float32)
    return {"u": u_pred.tobytes(), "shape": list(u_pred.shape)}


async def predicted_beat(
    spec_json: str,
    dataset: Any,
    dataset_path: Path,
    weights: bytes,
    sample: int,
    cache: Path | None = None,
    start_method: str = "forkserver",
    limits: JobLimits | None = None,
) -> np.ndarray:
    """The predicted potential ``[frames, nodes]`` of ``sample`` (float32): read from ``cache``
    when it holds this sample, else rolled out in a worker and stored there. A failed or
    unstable rollout is a :class:`DiscoveryError` naming the cause."""
    if cache is not None and cache.exists():
        try:
            with np.load(cache) as stored:
                if int(stored["sample"]) == sample:
                    return stored["u_pred"].astype(np.float32)
        except (OSError, ValueError, KeyError):
            pass  # a torn cache is rebuilt
    worker = Worker(
        rollout_sample,
        (spec_json, str(dataset_path), weights, sample),
        timeout_s=(limits or JobLimits()).seconds(dataset, 1),
        with_channel=True,
        threads=1,
        start_method=start_method,
        prefix="leads-viewer",
    )
    try:
        outcome = await worker.run_async()
    except SandboxError as exc:
        raise DiscoveryError(f"the candidate's beat could not be simulated: {exc}") from exc
    value = outcome.value
    u_pred = np.frombuffer(value["u"], dtype=np.float32).reshape(value["shape"])
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache.with_name(f".{cache.stem}.tmp.npz")
            np.savez_compressed(temporary, u_pred=u_pred, sample=sample)
            temporary.replace(cache)
        except OSError:
            pass  # the cache only saves time
    return u_pred
