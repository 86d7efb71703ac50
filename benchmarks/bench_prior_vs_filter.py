"""Benchmark: how much of the NDAE's prior-residual signal is spatial filtering, and how much is coverage?

On finished `ndae evaluate` runs (the `bench_directions` cells' run folders), per patient and atlas
region, Spearman ρ with the true severity of four regional normative z-scores (each z-scored
against the run's training controls with the same `NormativeModel`, age, sex and site):
- `NDAE prior`: the run's `z_prior_<region>` (the DAE's denoiser residual, normative z_sem), read
  from `prior_deviations.csv`;
- `slice high-pass`: the same four prepared axial slices the DAE sees, at their 2 mm, each minus
  its within-brain Gaussian blur (σ = 4 px = 8 mm, `ndae.baselines.voxelwise.highpass` in 2-D),
  mean per atlas region: what filtering alone gives on the pixels the NDAE sees;
- `slice raw`: the same slices unfiltered;
- `3-D high-pass`: the run's `z_highpass_voxel_<region>` (the whole brain volume), from patients.csv.
Nothing here is fitted on patients. Writes benchmarks/results/prior_vs_filter.json and .md.

    python -m benchmarks.bench_prior_vs_filter --work /tmp/ndae-directions --runs 'eval-*-tiny-steps200-seed0'
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
REGIONS = ("precentral", "postcentral", "internal_capsule", "ventricles", "white_matter", "frontal", "temporal")
SIGMA = 4.0


def slice_highpass(images: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """Each [C, H, W] slice minus its within-brain 2-D Gaussian blur (the 3-D baseline's rule)."""
    from ndae.baselines.voxelwise import highpass

    out = np.empty_like(images, dtype=np.float32)
    for i in range(images.shape[0]):
        for c in range(images.shape[1]):
            out[i, c] = highpass(images[i, c], np.ones(images.shape[2:], bool), sigma)
    return out


def run_rhos(run: Path) -> dict:
    from scipy.stats import spearmanr

    from ndae.data.dataset import load_slice_dataset
    from ndae.deviation.image_features import dae_slices_and_atlas, region_means
    from ndae.model import load_checkpoint
    from ndae.normative.model import NormativeModel, OutOfRangeWarning

    result = json.loads((run / "evaluation.json").read_text())
    cohort = Path(result["manifest"]).parent
    cache = Path(result["options"]["cache_dir"])
    truth = pd.read_csv(cohort / "truth.csv", dtype={"subject": str}).set_index("subject")
    data = load_slice_dataset(cohort / "manifest.csv", cache, progress=False)
    config = load_checkpoint(run / "dae" / "checkpoint.pt").config
    channels, atlas = dae_slices_and_atlas(config, cache, data.subjects[0], data.images.shape[1])
    images = data.images[:, channels]
    brain = images > -1.0
    covariates = data.manifest[["subject", "site", "age", "sex", "group"]].reset_index(drop=True)
    covariates["subject"] = covariates["subject"].astype(str)
    training = set(pd.read_csv(run / "train_manifest.csv", dtype={"subject": str})["subject"])
    controls = covariates["subject"].isin(training).to_numpy() & (covariates["group"] == "control").to_numpy()
    patients = (covariates["group"] == "als").to_numpy()
    severity = truth.loc[covariates.loc[patients, "subject"], "severity"].to_numpy(float)

    def z_of(table: pd.DataFrame) -> pd.DataFrame:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfRangeWarning)
            model = NormativeModel().fit(covariates[controls].reset_index(drop=True), table[controls].to_numpy(float),
                                         list(table.columns))
            return pd.DataFrame(model.z_scores(covariates, table.to_numpy(float)), columns=table.columns)

    features = {"slice raw": z_of(region_means(images, brain, atlas, prefix="")),
                "slice high-pass": z_of(region_means(slice_highpass(images), brain, atlas, prefix=""))}
    prior = pd.read_csv(run / "prior_deviations.csv", dtype={"subject": str}).set_index("subject").loc[covariates["subject"]]
    features["NDAE prior"] = prior[[c for c in prior.columns if c.startswith("z_prior_") and
                                    not c.startswith("z_prior_own_")]].rename(columns=lambda c: c[len("z_prior_"):])
    patients_table = pd.read_csv(run / "patients.csv", dtype={"subject": str}).set_index("subject")
    rows = covariates.loc[patients, "subject"]
    rhos = {}
    for name, table in features.items():
        values = table.reset_index(drop=True)[patients] if name != "NDAE prior" else table.loc[rows].reset_index(drop=True)
        rhos[name] = {r: float(spearmanr(values[r], severity)[0]) for r in REGIONS if r in values.columns}
    hp = {r: f"z_highpass_voxel_{r}" for r in REGIONS}
    rhos["3-D high-pass"] = {r: float(spearmanr(patients_table.loc[rows, c], severity)[0])
                             for r, c in hp.items() if c in patients_table.columns}
    disease = json.loads((cohort / "cohort.json").read_text()).get("parameters", {}).get("disease", cohort.name)
    return {"run": run.name, "cohort": cohort.name, "disease": disease, "rho": rhos}


def render(raw: dict) -> str:
    runs = raw["runs"]
    lines = ["## How much of the prior residual is filtering? (`benchmarks/bench_prior_vs_filter.py`)", ""]
    if not runs:
        return "\n".join(lines + ["No runs.", ""])
    methods = ["NDAE prior", "slice high-pass", "slice raw", "3-D high-pass"]
    frame = pd.DataFrame([{"disease": r["disease"], "method": m, "region": reg, "rho": v}
                          for r in runs for m in methods for reg, v in r["rho"].get(m, {}).items()])
    mean = frame.groupby(["disease", "method", "region"])["rho"].agg(["mean", "std", "count"]).reset_index()
    pre = mean[mean.region == "precentral"].set_index(["disease", "method"])
    sentences = []
    for disease in sorted(frame.disease.unique()):
        def get(m):
            return pre.loc[(disease, m), "mean"] if (disease, m) in pre.index else float("nan")
        sentences.append(f"{disease}: precentral ρ NDAE prior {get('NDAE prior'):+.2f}, slice high-pass "
                         f"{get('slice high-pass'):+.2f}, slice raw {get('slice raw'):+.2f}, 3-D high-pass "
                         f"{get('3-D high-pass'):+.2f}")
    lines += ["Verdict (computed, mean over runs): " + "; ".join(sentences) + ".", "",
              f"Spearman ρ of each regional z with true severity, patients only, mean (sd) over {len(runs)} runs "
              "(cohort seeds × disease settings). NDAE prior: the DAE denoiser's residual (normative z_sem); slice "
              "high-pass / raw: the same 4 prepared slices at 2 mm, filtered or not; 3-D high-pass: the whole volume's "
              "high-pass voxel-wise baseline. All z-scored against the run's training controls.", "",
              "| disease | region | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for disease in sorted(frame.disease.unique()):
        for region in REGIONS:
            cells = []
            for m in methods:
                row = mean[(mean.disease == disease) & (mean.method == m) & (mean.region == region)]
                cells.append("–" if row.empty else f"{row['mean'].iloc[0]:+.2f} ({row['std'].iloc[0]:.2f})")
            lines.append(f"| {disease} | {region} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{raw['command']}`; {raw['date']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ndae-directions"))
    parser.add_argument("--runs", default="eval-*-tiny-steps200-seed0", help="glob of run folders under --work")
    parser.add_argument("--out", type=Path, default=RESULTS / "prior_vs_filter.json")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    if args.render_only:
        atomic_write_text(args.out.with_suffix(".md"), render(json.loads(args.out.read_text())))
        return 0
    runs = [run_rhos(run) for run in sorted(args.work.glob(args.runs)) if (run / "evaluation.json").is_file()
            and (run / "prior_deviations.csv").is_file()]
    raw = {"command": "python -m benchmarks.bench_prior_vs_filter " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "runs": runs}
    atomic_write_json(args.out, raw)
    atomic_write_text(args.out.with_suffix(".md"), render(raw))
    print(render(raw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
