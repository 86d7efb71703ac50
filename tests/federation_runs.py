"""One small in-process federation shared by the test files that check a whole run.

A run of the real ClientApp/ServerApp code on `InProcessGrid` costs tens of seconds on 2 cores,
most of it in the pooled survival statistics, so the checks of one run's files
(tests/test_federation.py, tests/test_federation_prior_residuals.py) read the same two runs: a
pooled one and a federated one resumed from its DAE, both with the voxel-wise baseline and the
prior residual feature in the Cox model. Tests read them and never write into their folders;
a test that needs another run makes its own beside them (`run_in_process`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

SITES = ("site1", "site2", "site3")
# 16 events: one region keeps the voxel-wise Cox model (age, sex, precentral) at >= 5 events per covariate
VOXELWISE = {"voxelwise_baseline": True, "voxelwise_regions": "precentral"}
# 18 patients: one prior region beside the Mahalanobis score keeps the Cox model estimable
PRIOR_FEATURES = "mahalanobis,z_prior_precentral"
SHARED_RUN = {"survival_features": PRIOR_FEATURES, **VOXELWISE}


def make_cohort(root: Path) -> Path:
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    make_synthetic_cohort(root / "cohort", sites=3, controls_per_site=7, patients_per_site=6, seed=1)  # 21 controls: enough for the age probe
    return root


def manifests(root: Path) -> list[Path]:
    return [root / "cohort" / "sites" / s / "manifest.csv" for s in SITES]


# name -> the `Federation` object of the last in-process run of that name, after its run: the
# tests of what a run leaves on it read the shared runs' objects instead of running again
FEDERATIONS: dict = {}


def run_in_process(root: Path, name: str, **overrides):
    """(summary, run folder) of one federation on the cohort under `root`, in process."""
    from ndae.federation.config import FederationConfig
    from ndae.federation.inprocess import InProcessGrid
    from ndae.federation.server.phases import Federation

    settings = {"rounds": 1, "batch_size": 4, "seed": 3, "voxelwise_baseline": False, **overrides}
    config = FederationConfig(run_dir=str(root / name), cache_dir=str(root / "cache"), **settings)
    federation = Federation(InProcessGrid(manifests(root), config.to_run_config()), config, log=lambda _: None)
    FEDERATIONS[name] = federation
    return federation.run(), root / name


def pooled_run(root: Path):
    return run_in_process(root, "pooled", survival_mode="pooled", **SHARED_RUN)


def federated_run(root: Path, pooled_dir: Path):
    """The same global model (training is resumed from the pooled run's checkpoint, not redone),
    survival fitted without any patient row leaving its site."""
    shutil.copytree(pooled_dir / "dae", root / "federated" / "dae")
    return run_in_process(root, "federated", survival_mode="federated", **SHARED_RUN)
