"""Conversions between the project's objects and Flower records (what crosses a site boundary).

Every numeric array keeps its dtype (float64 statistics stay float64), so a federated sum is
the same number a central computation gives.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from flwr.app import Array, ArrayRecord, ConfigRecord

from ndae.errors import NdaeError

MODEL_PREFIX, EMA_PREFIX = "model.", "ema."
# The normative query of a non-private run also carries the initial weights, and a site's reply
# the controls' statistics under them: the age probe's yardstick (ndae.federation.server.latent_probe).
INITIAL_WEIGHTS_KEY, INITIAL_STATS_KEY = "dae-initial", "stats-initial"
VOXELWISE_KEY = "voxelwise"  # the fitted voxel-wise baseline, in a non-private run's deviations query
PRIOR_KEY = "prior-residuals"  # the prior residuals' normative model, in the deviations query


# ---- DAE weights -------------------------------------------------------------------------------
def dae_to_record(model, ema) -> ArrayRecord:
    """Weights and EMA weights of the DAE in one ArrayRecord (`model.*`, `ema.*`): FedAvg and
    FedProx average both; FedAdam steps `model.*` and averages `ema.*` (ndae/federation/server/strategy.py)."""
    from ndae.model.dae import unwrap

    arrays: dict[str, Array] = {}
    for prefix, module in ((MODEL_PREFIX, unwrap(model)), (EMA_PREFIX, ema.model)):
        for name, tensor in module.state_dict().items():
            arrays[prefix + name] = Array(tensor.detach().cpu().numpy().copy())
    return ArrayRecord(arrays)


def ema_weights_record(ema) -> ArrayRecord:
    """The global EMA weights in both halves of a `dae_to_record` message: what the sites
    encode with after training (normative statistics, deviation scores)."""
    return dae_to_record(ema.model, ema)


def record_to_dae(record: ArrayRecord, model, ema=None) -> None:
    """Load `dae_to_record` weights into `model` (and `ema.model`); names and shapes must match."""
    import torch

    from ndae.model.dae import unwrap

    targets = [(MODEL_PREFIX, unwrap(model))] + ([(EMA_PREFIX, ema.model)] if ema is not None else [])
    for prefix, module in targets:
        state = module.state_dict()
        new_state = {}
        for name, old in state.items():
            key = prefix + name
            if key not in record:
                raise NdaeError(f"DAE weights message has no array {key!r}: model configs differ between server and site")
            value = record[key].numpy()
            if tuple(value.shape) != tuple(old.shape):
                raise NdaeError(f"DAE weights message: {key!r} has shape {value.shape}, the model expects {tuple(old.shape)}")
            new_state[name] = torch.as_tensor(np.asarray(value), dtype=old.dtype)
        module.load_state_dict(new_state)


# ---- arrays and tables -------------------------------------------------------------------------
def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    # np.asarray(...).copy(order="C"), not np.ascontiguousarray: that turns 0-d arrays into 1-d.
    return ArrayRecord({key: Array(np.asarray(value).copy(order="C")) for key, value in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: record[key].numpy() for key in record.keys()}


def frame_to_record(frame: pd.DataFrame) -> ArrayRecord:
    """One array per column (numbers as float64, anything else as str); column order kept."""
    arrays = {}
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            arrays[f"{len(arrays):03d}:{column}"] = values.to_numpy(dtype=np.float64)
        else:
            arrays[f"{len(arrays):03d}:{column}"] = values.astype(str).to_numpy(dtype=np.str_)
    return arrays_to_record(arrays)


def record_to_frame(record: ArrayRecord) -> pd.DataFrame:
    columns = {}
    for key in sorted(record.keys()):
        _, _, name = key.partition(":")
        columns[name] = record[key].numpy()
    return pd.DataFrame(columns)


# ---- normative model ---------------------------------------------------------------------------
def normative_to_config(model) -> ConfigRecord:
    """The fitted normative model as the bytes of its two files (`model.npz`, `model.json`)."""
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        return ConfigRecord({name: (Path(folder) / name).read_bytes() for name in ("model.npz", "model.json")})


def config_to_normative(record: ConfigRecord):
    from ndae.normative import NormativeModel

    with tempfile.TemporaryDirectory() as folder:
        for name in ("model.npz", "model.json"):
            if name not in record:
                raise NdaeError(f"normative model message has no {name!r}")
            (Path(folder) / name).write_bytes(record[name])
        return NormativeModel.load(folder)


def voxelwise_to_config(baseline) -> ConfigRecord:
    """A fitted voxel-wise baseline (`ndae.baselines.voxelwise`): its normative model's files, the
    voxel sampling stride and which voxels count in the region means (decided from the summed
    statistics, so every site scores with the same ones)."""
    import io

    record = normative_to_config(baseline.model_)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(baseline.informative_, bool), allow_pickle=False)
    record["informative.npy"] = buffer.getvalue()
    record["stride"] = int(baseline.stride)
    return record


def config_to_voxelwise(record: ConfigRecord):
    import io

    from ndae.baselines.voxelwise import VoxelwiseNormativeBaseline

    if "informative.npy" not in record or "stride" not in record:
        raise NdaeError("voxel-wise baseline message has no 'informative.npy' or 'stride'")
    try:
        baseline = VoxelwiseNormativeBaseline(stride=int(record["stride"]))
        model = config_to_normative(record)
        informative = np.load(io.BytesIO(record["informative.npy"]), allow_pickle=False)
    except (NdaeError, TypeError, ValueError, OSError, KeyError) as error:
        raise NdaeError(f"voxel-wise baseline message is malformed ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:160] if str(error) else ''})") from None
    if model.n_features != len(baseline.voxels) or informative.shape != (len(baseline.voxels),):
        raise NdaeError(f"voxel-wise baseline message models {model.n_features} voxels; the atlas at stride "
                        f"{baseline.stride} has {len(baseline.voxels)}")
    baseline.model_, baseline.informative_ = model, informative.astype(bool)
    return baseline
