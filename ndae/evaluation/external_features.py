"""NDAE features computed elsewhere (a GPU run, `benchmarks/gpu_ndae.py`), read for `ndae evaluate
--features DIR` so that they are scored with the same truth metrics, folds and baselines as a run
that trains its DAE itself: the pipeline takes z_sem and the prior residuals' region means from DIR
instead of training, encoding and computing them, and does everything else as always.

DIR holds `latents.npz` (`subject`, `z_sem`), `prior_residuals.csv` (`subject` + the raw region
means `prior_<region>`, `prior_own_<region>`) and `run.json` (what the run was fitted on). The
features must have been computed on this manifest with the same held-out controls, or the
held-out controls' AUROC and calibration would score controls the DAE saw: both are checked, and
the evaluation refuses before writing anything otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.errors import NdaeError

LATENTS, PRIOR_RESIDUALS, RUN = "latents.npz", "prior_residuals.csv", "run.json"


@dataclass
class ExternalFeatures:
    subjects: list[str]
    z_sem: np.ndarray  # [n, d], rows of `subjects`
    prior_residuals: pd.DataFrame | None  # subject + raw region means, or None when DIR has none
    prior_swap: dict | None  # the swap test of the run that computed them
    dae: dict  # the run's DAE summary (evaluation.json "dae")
    source: dict  # where they came from: folder, machine, data file hash


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_external_features(folder: str | Path, manifest_path: str | Path, manifest: pd.DataFrame,
                           held_out_subjects: list[str], held_out_fraction: float, seed: int) -> ExternalFeatures:
    """Read and check DIR against the manifest (every subject, nothing else) and the held-out controls."""
    folder, manifest_path = Path(folder), Path(manifest_path)
    name = f"--features {folder}"
    if not folder.is_dir():
        raise NdaeError(f"{name}: not a folder")
    try:
        run = json.loads((folder / RUN).read_text())
    except FileNotFoundError as error:
        raise NdaeError(f"{name}: no {RUN}") from error
    except (OSError, ValueError) as error:
        raise NdaeError(f"{name}: {RUN} is not readable JSON") from error
    if not isinstance(run, dict) or not isinstance(run.get("data"), dict) or not isinstance(run.get("dae"), dict):
        raise NdaeError(f"{name}: {RUN} has no 'data' and 'dae' sections (an unfinished run? it writes 'dae' last)")
    data = run["data"]
    if data.get("manifest_sha256") != _sha256(manifest_path):
        raise NdaeError(f"{name}: computed on another manifest (run.json data.manifest_sha256 differs from "
                        f"{manifest_path.name}'s)")
    if data.get("held_out_controls") != held_out_fraction or data.get("seed") != seed:
        raise NdaeError(f"{name}: held out controls with --held-out-controls {data.get('held_out_controls')} and "
                        f"--seed {data.get('seed')}; evaluate with the same")
    if sorted(map(str, data.get("held_out_subjects") or [])) != sorted(map(str, held_out_subjects)):
        raise NdaeError(f"{name}: run.json data.held_out_subjects are not the controls this evaluation holds out")
    try:
        with np.load(folder / LATENTS, allow_pickle=False) as latents:
            subjects = [str(s) for s in latents["subject"]]
            z_sem = np.asarray(latents["z_sem"], np.float64)
    except FileNotFoundError as error:
        raise NdaeError(f"{name}: no {LATENTS}") from error
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise NdaeError(f"{name}: {LATENTS} needs arrays subject and z_sem ({type(error).__name__})") from error
    if z_sem.ndim != 2 or z_sem.shape[0] != len(subjects) or not np.isfinite(z_sem).all():
        raise NdaeError(f"{name}: {LATENTS} z_sem must be finite, one row per subject, got shape {z_sem.shape}")
    wanted = set(manifest["subject"].astype(str))
    if len(set(subjects)) != len(subjects) or set(subjects) != wanted:
        raise NdaeError(f"{name}: {LATENTS} subjects are not the manifest's ({len(set(subjects) - wanted)} extra, "
                        f"{len(wanted - set(subjects))} missing)")
    prior = None
    if (folder / PRIOR_RESIDUALS).exists():
        try:
            prior = pd.read_csv(folder / PRIOR_RESIDUALS, dtype={"subject": str})
        except (OSError, ValueError) as error:
            raise NdaeError(f"{name}: {PRIOR_RESIDUALS} is not a readable CSV") from error
        values = prior.drop(columns=["subject"], errors="ignore")
        if ("subject" not in prior.columns or set(prior["subject"]) != wanted or len(prior) != len(wanted)
                or values.empty or not all(c.startswith("prior_") for c in values.columns)
                or not np.isfinite(values.to_numpy(float)).all()):
            raise NdaeError(f"{name}: {PRIOR_RESIDUALS} needs one row per manifest subject, a subject column and "
                            "finite prior_<region> columns")
    swap = (run.get("quality") or {}).get("prior_residual_swap")
    source = {"folder": str(folder.resolve()), "machine": (run.get("run") or {}).get("machine"),
              "data_sha256": data.get("sha256"), "training": run.get("training")}
    return ExternalFeatures(subjects, z_sem, prior, swap if isinstance(swap, dict) else None, run["dae"], source)
