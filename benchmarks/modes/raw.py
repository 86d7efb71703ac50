"""The raw results of a pipeline-modes run, from which its RESULTS section is rendered: results/modes.json
(settings, provenance, cohorts, checks, calibration, timings) beside modes_per_seed.csv and
modes_per_fold.csv. `--render-only` reads them back, so the prose and figures can be regenerated
without the hour of runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmarks.common import RESULTS_DIR
from ndae.io import atomic_write_text

NAME = "modes"


def paths(folder: Path = RESULTS_DIR) -> dict[str, Path]:
    return {"json": folder / f"{NAME}.json", "per_seed": folder / f"{NAME}_per_seed.csv",
            "per_fold": folder / f"{NAME}_per_fold.csv"}


def save(raw: dict, seeds: pd.DataFrame, per_fold: pd.DataFrame, folder: Path = RESULTS_DIR) -> None:
    where = paths(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv = dict(index=False, lineterminator="\n", float_format="%.6g")
    atomic_write_text(where["per_seed"], seeds.to_csv(**csv))
    atomic_write_text(where["per_fold"], per_fold.to_csv(**csv))
    atomic_write_text(where["json"], json.dumps(raw, indent=2, allow_nan=True) + "\n")


def load(folder: Path = RESULTS_DIR) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The raw dict (cohort-seed keys back to int), the per-seed and the per-fold tables."""
    where = paths(folder)
    missing = [str(p) for p in where.values() if not p.exists()]
    if missing:
        raise SystemExit(f"--render-only: missing raw results {missing}; run the benchmark first")
    raw = json.loads(where["json"].read_text())
    for key in ("cohorts", "checks"):
        raw[key] = {int(seed): value for seed, value in raw[key].items()}
    seeds = pd.read_csv(where["per_seed"], keep_default_na=False, na_values=[""])
    seeds["error"] = seeds["error"].fillna("").astype(str)
    return raw, seeds, pd.read_csv(where["per_fold"])
