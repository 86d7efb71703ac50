"""Does the NDAE chain carry the disease? Spearman ρ of each deviation score with the true severity.

The chain is the project's own (prepare → DAE trained on the controls → z_sem → normative model
of z_sem given age, sex, site → deviation scores); the truth is a cohort's `truth.csv` with a
`severity` column. A shuffled-latent control scores the patients with their z_sem permuted among
them: the same chain with the link to the anatomy cut, so its ρ is what chance gives.

Used by `tests/test_ndae_signal.py` (a chain that carries no signal must fail) and
`benchmarks/bench_signal.py` (the distribution of ρ over seeds that sets the test's threshold).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndae.evaluation.truth_metrics import severity_spearman

SCORES = ("cosine", "mean_abs_z", "max_abs_z", "mahalanobis")


def ndae_signal(manifest: str | Path, truth: str | Path, work: str | Path, *, config: str = "tiny", steps: int = 300,
                seed: int = 0, shuffle_seed: int = 1, device: str | None = "cpu") -> dict[str, Any]:
    """Train the DAE on the manifest's controls, score its patients; ρ with severity, and the
    shuffled-latent control's ρ. `work` holds the prepared cache and the run."""
    from ndae.data.manifest import read_manifest
    from ndae.deviation.scores import deviation_table
    from ndae.model.run import load_slices, train_run
    from ndae.model import encode, load_checkpoint
    from ndae.normative.model import NormativeModel, OutOfRangeWarning

    work = Path(work)
    cache = work / "cache"
    summary = train_run(manifest, work / "run", config, steps=steps, seed=seed, cache_dir=cache, device=device,
                        progress=False, figure_steps=2)
    state = load_checkpoint(work / "run" / "dae" / "checkpoint.pt", device or "cpu")
    data = load_slices(manifest, cache, progress=False)
    z_sem = encode(state.ema.model, data.images).numpy().astype(np.float64)
    rows = read_manifest(manifest).set_index("subject").loc[list(map(str, data.subjects))].reset_index()
    covariates = rows[["subject", "site", "age", "sex"]].astype({"subject": str})
    controls = (rows["group"] == "control").to_numpy()
    patients = ~controls
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        normative = NormativeModel().fit(covariates[controls].reset_index(drop=True), z_sem[controls],
                                         [f"z_sem_{k}" for k in range(z_sem.shape[1])])
        observed = deviation_table(covariates["subject"][patients], covariates[patients].reset_index(drop=True),
                                   z_sem[patients], normative)
        permuted = z_sem[patients][np.random.default_rng(shuffle_seed).permutation(int(patients.sum()))]
        shuffled = deviation_table(covariates["subject"][patients], covariates[patients].reset_index(drop=True),
                                   permuted, normative)
    truth_table = pd.read_csv(truth, dtype={"subject": str})
    return {"rho": severity_spearman(truth_table, observed, SCORES),
            "rho_shuffled": severity_spearman(truth_table, shuffled, SCORES),
            "patients": int(patients.sum()), "controls": int(controls.sum()), "steps": steps, "seed": seed,
            "config": config, "final_loss": summary.get("final_loss_mean_last_50")}
