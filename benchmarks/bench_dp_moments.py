"""Utility of the DP normative moments: how close a normative model fitted from the sites' noisy
sufficient statistics comes to the exact (non-private) one, before and after the minimal release.

    python -m benchmarks.bench_dp_moments                 # ~3–4 min on 2 CPU cores
    python -m benchmarks.bench_dp_moments --render-only   # rewrite results/dp_moments.md from the JSON

Simulated latents shaped like the tiny DAE's z_sem (d = 64, ‖z‖ ≈ 2.7: a shared mean over
features, a smooth age effect, a sex effect, site offsets, correlated residuals), 3 sites of
equal size, controls per site ∈ {30, 100, 300, 1000}, ε ∈ {1, 3, 8} for the one release at
δ = DEFAULT_DELTA (noise multiplier solved with the repository's RDP accountant), ≥ 5 noise
draws. Patients: controls' distribution plus a disease shift of random severity. Reported per
variant (mean ± sd over draws): correlation of the DP vs exact predictive mean over a grid of
ages × sex at a site with controls (across features; also of its age/sex part alone, the mean
minus each feature's grid average), the geometric mean of DP/exact predictive sd, and the
Spearman correlation of the patients' Mahalanobis scores (DP vs exact model), plus the
predicted mean correlation `moments_noise_warnings` uses. Raw numbers: results/dp_moments.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, provenance, write_section  # noqa: E402
from ndae.io import atomic_write_text  # noqa: E402

SITES = ("site1", "site2", "site3")
D = 64
CONTROLS = (30, 100, 300, 1000)
EPSILONS = (1.0, 3.0, 8.0)
PATIENTS_PER_SITE = 60
OLD_CLIPS = (2.5, 3.0)  # the run config defaults before this benchmark


# ---- simulation ------------------------------------------------------------------------------------
def anatomy(seed: int = 2024) -> dict[str, np.ndarray]:
    """Fixed 'DAE': per-feature shared mean, age/sex loadings, residual factors, disease direction."""
    rng = np.random.default_rng(seed)
    disease = rng.normal(0, 1, D)
    return {"base": rng.normal(0, 0.27, D), "age1": rng.normal(0, 0.08, D), "age2": rng.normal(0, 0.03, D),
            "sex": rng.normal(0, 0.04, D), "factors": rng.normal(0, 0.08, (D, 4)),
            "site": rng.normal(0, 0.04, (len(SITES), D)), "disease": 0.6 * disease / np.linalg.norm(disease)}


def simulate(a: dict, n_per_site: int, rng: np.random.Generator, patients: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    frames, latents = [], []
    for s, site in enumerate(SITES):
        n = n_per_site
        age = rng.uniform(20, 85, n)
        female = rng.random(n) < 0.5
        g1 = (age - 52.5) / 20
        Y = (a["base"] + np.outer(g1, a["age1"]) + np.outer(g1**2 - 0.88, a["age2"]) + np.outer(female, a["sex"])
             + a["site"][s] + rng.normal(0, 1, (n, 4)) @ a["factors"].T + rng.normal(0, 0.1, (n, D)))
        if patients:
            Y = Y + np.outer(rng.uniform(0, 1.5, n), a["disease"])
        frames.append(pd.DataFrame({"age": age, "sex": np.where(female, "F", "M"), "site": site}))
        latents.append(Y)
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, "subject", [f"{'p' if patients else 'c'}{i}" for i in range(len(frame))])
    return frame, np.vstack(latents)


# ---- releases ----------------------------------------------------------------------------------------
def noise_multiplier_for(epsilon: float, delta: float) -> float:
    """The m of one Gaussian release (sample rate 1) with ε(m, δ) = epsilon (RDP, bisection)."""
    from ndae.privacy.accountant import epsilon_of

    low, high = 0.05, 100.0
    for _ in range(60):
        middle = (low * high) ** 0.5
        low, high = (middle, high) if epsilon_of([(middle, 1.0, 1)], delta) > epsilon else (low, middle)
    return high


def old_postprocess(stats):
    """The server's post-processing before this change (ndae/federation/privacy.py); its eigenvalue
    floor is the one still in use (`floor_eigenvalues`)."""
    from ndae.privacy.moments_postprocessing import floor_eigenvalues as psd

    p = stats.xtx.shape[0]
    n = max(float(stats.n), p + 2.0)

    sum_y2 = np.maximum(stats.sum_y2, stats.sum_y ** 2 / n + 1e-6 * n)
    site_n = np.maximum(stats.site_n, 1.0)
    return replace(stats, n=n, xtx=psd(stats.xtx), sum_y2=sum_y2, site_n=site_n, yty=None if stats.yty is None else psd(stats.yty))


def old_release(frame, Y, spec, m, rng):
    """The site code before this change: full statistics set, whole rows clipped, uniform noise."""
    from ndae.normative import SufficientStats
    from ndae.privacy.gaussian_mechanism import clip_rows, privatize_arrays

    cx, cy = OLD_CLIPS
    X, _ = clip_rows(spec.build(frame), cx)
    Yc, _ = clip_rows(Y, cy)
    arrays = SufficientStats.from_data(frame, Y, spec, site_column="site").to_arrays()
    arrays.update(n=np.asarray(float(len(X))), xtx=X.T @ X, xty=X.T @ Yc, sum_y=Yc.sum(0), sum_y2=(Yc * Yc).sum(0),
                  yty=Yc.T @ Yc, covariate_min=np.array([spec.age_range[0]]), covariate_max=np.array([spec.age_range[1]]))
    noisy = privatize_arrays(arrays, covariate_clip=cx, latent_clip=cy, noise_multiplier=m, records=len(X), rng=rng,
                             public=("site_names", "design", "covariate_min", "covariate_max"))
    return noisy.stats


def new_release(frame, Y, spec, m, rng, variant):
    from ndae.privacy.dp_moments import private_moments

    public = {"design": np.array(json.dumps(spec.to_dict(), sort_keys=True)),
              "site_names": np.array(sorted(set(frame["site"])), dtype=np.str_),
              "covariate_min": np.array([spec.age_range[0]]), "covariate_max": np.array([spec.age_range[1]])}
    return private_moments(spec.build(frame), Y, covariate_clip=variant["covariate_clip"],
                           latent_clip=variant["latent_clip"], noise_multiplier=m, rng=rng, public=public,
                           split=variant["split"], cross_products=variant["cross_products"]).stats


# Each variant adds one change to the one above it (`alt.` ones are alternatives to `pooled`).
NEW = {"split": "uniform", "cross_products": True, "postprocess": "new"}
VARIANTS = {
    "old": {"label": "before: n, XᵀX, XᵀY, ΣY, ΣY², YᵀY; rows clipped whole; patients unclipped; old post-processing"},
    "minimal": {"label": "minimal XᵀX, XᵀY, YᵀY; intercept kept when clipping; patients clipped too; uniform noise; "
                         "old post-processing", **NEW, "postprocess": "old"},
    "postprocess": {"label": "+ new post-processing (ridge on XᵀX, variances shrunk across features, YᵀY spectrally "
                             "denoised, residual variance de-biased, DP noise in the site-intercept shrinkage)", **NEW},
    "split": {"label": "+ noise split XᵀX 0.1 / XᵀY 0.6 / YᵀY 0.3 (uniform: 0.22 / 0.32 / 0.46)",
              **NEW, "split": {"xtx": 0.1, "xty": 0.6, "yty": 0.3}},
    "pooled": {"label": "+ no site intercepts (`site_effects=False`)",
               **NEW, "split": {"xtx": 0.1, "xty": 0.6, "yty": 0.3}, "site_effects": False},
    "pooled_uniform": {"label": "alt.: no site intercepts, uniform noise", **NEW, "site_effects": False},
    "diagonal": {"label": "alt.: no site intercepts, diagonal ΣY² instead of YᵀY",
                 **NEW, "split": {"xtx": 0.1, "xty": 0.6, "yty": 0.3}, "cross_products": False, "site_effects": False},
    "knots2": {"label": "alt.: no site intercepts, 2-knot (linear) age basis with C_x = 2.25",
               **NEW, "split": {"xtx": 0.1, "xty": 0.6, "yty": 0.3}, "site_effects": False, "n_knots": 2,
               "covariate_clip": 2.25},
}


def _variant(name: str) -> dict:
    v = {"covariate_clip": OLD_CLIPS[0], "latent_clip": OLD_CLIPS[1], "n_knots": 4, "site_effects": True}
    v.update(VARIANTS[name])
    return v


# ---- metrics -----------------------------------------------------------------------------------------
def grid() -> pd.DataFrame:
    ages = np.linspace(20, 85, 27)
    return pd.DataFrame({"age": np.tile(ages, 2), "sex": np.repeat(["M", "F"], len(ages)), "site": SITES[0]})


def compare(exact, private, patients, patient_Y) -> dict[str, float]:
    from scipy.stats import spearmanr

    from ndae.deviation.scores import mahalanobis

    g = grid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean_e, var_e = exact.predict(g)
        mean_p, var_p = private.predict(g)
        maha_e = mahalanobis(exact, patients, patient_Y)
        maha_p = mahalanobis(private, patients, patient_Y)
    effect_e, effect_p = mean_e - mean_e.mean(0), mean_p - mean_p.mean(0)
    return {"mean_corr": float(np.corrcoef(mean_e.ravel(), mean_p.ravel())[0, 1]),
            "effect_corr": float(np.corrcoef(effect_e.ravel(), effect_p.ravel())[0, 1]),
            "sd_ratio": float(np.exp(np.mean(0.5 * np.log(var_p / var_e)))),
            "mahalanobis_rank": float(spearmanr(maha_e, maha_p)[0])}


def run_config(a, n_per_site, epsilon, draws, variants, seed):
    from ndae.normative import DesignSpec, NormativeModel, SufficientStats
    from ndae.privacy.delta import DEFAULT_DELTA
    from ndae.privacy.moments_postprocessing import postprocess_noisy_stats, predicted_mean_correlation

    m = noise_multiplier_for(epsilon, DEFAULT_DELTA)
    rng = np.random.default_rng(seed)
    controls, Y = simulate(a, n_per_site, rng)
    patients, patient_Y = simulate(a, PATIENTS_PER_SITE, rng, patients=True)
    exact = NormativeModel().fit(controls, Y)
    out = {"n_per_site": n_per_site, "epsilon": epsilon, "noise_multiplier": m, "variants": {}}
    for name in variants:
        v = _variant(name)
        spec = DesignSpec(n_knots=v["n_knots"])
        rows = []
        for draw in range(draws):
            noise = np.random.default_rng([seed, draw, 7])
            per_site = []
            for site in SITES:
                at = (controls["site"] == site).to_numpy()
                frame = controls[at].reset_index(drop=True)
                arrays = old_release(frame, Y[at], spec, m, noise) if name == "old" else new_release(frame, Y[at], spec, m, noise, v)
                per_site.append(arrays)
            stats = sum(SufficientStats.from_arrays(arrays) for arrays in per_site)
            stats = old_postprocess(stats) if name == "old" or v["postprocess"] == "old" else postprocess_noisy_stats(stats)
            private = NormativeModel(site_effects=v["site_effects"]).fit_stats(stats)
            row = compare(exact, private, patients, patient_Y)
            if name != "old":
                row["predicted_site_corr"] = float(np.mean([predicted_mean_correlation(arrays) for arrays in per_site]))
            rows.append(row)
        out["variants"][name] = {key: [r[key] for r in rows] for key in rows[0]}
    return out


# ---- report ----------------------------------------------------------------------------------------------
def _ms(values) -> str:
    values = np.asarray(values, dtype=float)
    if np.isnan(values).any():  # sd ratio: some draw gave negative predictive variances
        return f"invalid in {int(np.isnan(values).sum())}/{len(values)}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values.mean():.2f}"


def render(result: dict) -> str:
    configs = result["configs"]
    variants = result["variants"]
    lines = [
        f"Simulated z_sem (d = {D}, mean ‖z‖ = {result['latent_norm']:.2f}, design-row norms "
        f"{result['design_norm'][0]:.2f}–{result['design_norm'][1]:.2f}), {len(SITES)} sites of equal size, "
        f"{PATIENTS_PER_SITE} patients per site; one Gaussian release per site at δ = {result['delta']:g}, noise multiplier "
        f"solved for ε with the RDP accountant; {result['draws']} noise draws per cell (mean ± sd). Exact = the "
        f"non-private model on the unclipped controls (4-knot spline, site intercepts). Clips C_x = {OLD_CLIPS[0]:g}, "
        f"C_y = {OLD_CLIPS[1]:g} unless stated. Sensitivity² of the release: before {result['sensitivity2']['old']:.0f}, "
        f"minimal {result['sensitivity2']['minimal']:.0f}.", "",
        "Columns: mean r = correlation of DP vs exact predictive mean (grid of 27 ages × 2 sexes at site1, all "
        "features); effect r = the same for the age/sex part alone (mean minus each feature's grid average); sd ratio "
        "= geometric mean of DP/exact predictive sd; Mahalanobis ρ = Spearman correlation of the patients' "
        "Mahalanobis scores (DP vs exact); predicted r = `predicted_mean_correlation` of a site's own release "
        "(what `moments_noise_warnings` tests).", "",
        "| variant | controls / site | ε | m | mean r | effect r | sd ratio | Mahalanobis ρ | predicted r |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in variants:
        for config in configs:
            cell = config["variants"][name]
            predicted = _ms(cell["predicted_site_corr"]) if "predicted_site_corr" in cell else "–"
            lines.append(f"| {name} | {config['n_per_site']} | {config['epsilon']:g} | {config['noise_multiplier']:.2f} | "
                         f"{_ms(cell['mean_corr'])} | {_ms(cell['effect_corr'])} | {_ms(cell['sd_ratio'])} | "
                         f"{_ms(cell['mahalanobis_rank'])} | {predicted} |")
    lines += ["", "Variants (each adds one change to the one above; `alt.` rows are alternatives to `pooled`):", ""]
    lines += [f"- `{name}`: {VARIANTS[name]['label']}" for name in variants]
    lines += ["", "### Reading (generated from the numbers above)", ""] + summary(result)
    return "\n".join(lines)


def _mean(result, name, key, n=None, epsilon=None):
    """Mean over cells of the per-cell means; draws with invalid (negative) variances are left out."""
    values = [np.nanmean(c["variants"][name][key]) if not np.isnan(c["variants"][name][key]).all() else np.nan
              for c in result["configs"]
              if (n is None or c["n_per_site"] == n) and (epsilon is None or c["epsilon"] == epsilon)]
    return float(np.nanmean(values))


def _invalid(result, name) -> int:
    return int(sum(np.isnan(c["variants"][name]["sd_ratio"]).sum() for c in result["configs"]))


def summary(result: dict) -> list[str]:
    names = result["variants"]
    keys = ("mean_corr", "effect_corr", "sd_ratio", "mahalanobis_rank")
    out = []
    score = {name: _mean(result, name, "mahalanobis_rank") + _mean(result, name, "effect_corr")
             - abs(np.log(_mean(result, name, "sd_ratio"))) for name in names}
    score = {name: (value if np.isfinite(value) and not _invalid(result, name) else -np.inf)
             for name, value in score.items()}
    best = max(score, key=score.get)
    out.append("Averaged over all cells: " + "; ".join(
        f"`{name}` mean r {_mean(result, name, 'mean_corr'):.2f}, effect r {_mean(result, name, 'effect_corr'):.2f}, "
        f"sd ratio {_mean(result, name, 'sd_ratio'):.2f}, Mahalanobis ρ {_mean(result, name, 'mahalanobis_rank'):.2f}"
        + (f" ({_invalid(result, name)} draws with negative predictive variances left out)" if _invalid(result, name) else "")
        for name in names) + ".")
    out.append("")
    out.append(f"Best by (Mahalanobis ρ + effect r − |log sd ratio|) averaged over cells: `{best}` "
               f"({score[best]:.2f}; `old` {score['old']:.2f}). Per cell, `{best}` beats `old` on Mahalanobis ρ in "
               f"{sum(np.mean(c['variants'][best]['mahalanobis_rank']) > np.mean(c['variants']['old']['mahalanobis_rank']) for c in result['configs'])}"
               f" of {len(result['configs'])} cells, on mean r in "
               f"{sum(np.mean(c['variants'][best]['mean_corr']) > np.mean(c['variants']['old']['mean_corr']) for c in result['configs'])}"
               f" of {len(result['configs'])} cells and on the sd ratio's distance from 1 in "
               f"{sum(abs(np.log(np.mean(c['variants'][best]['sd_ratio']))) < abs(np.log(np.mean(c['variants']['old']['sd_ratio']))) for c in result['configs'])}.")
    smallest = min(CONTROLS)
    cell = [c for c in result["configs"] if c["n_per_site"] == smallest and c["epsilon"] == min(EPSILONS)][0]
    out.append(f"At {smallest} controls per site and ε = {min(EPSILONS):g} (m = {cell['noise_multiplier']:.2f}): "
               + ", ".join(f"`{name}` mean r {np.mean(cell['variants'][name]['mean_corr']):.2f}, sd ratio "
                           f"{np.mean(cell['variants'][name]['sd_ratio']):.2f}" for name in ("old", best)) + ".")
    # threshold justification: predicted r vs measured Mahalanobis ρ, over every cell of the chosen variant
    pairs = [(np.mean(c["variants"][best]["predicted_site_corr"]), np.mean(c["variants"][best]["mahalanobis_rank"]),
              c["n_per_site"], c["epsilon"]) for c in result["configs"] if "predicted_site_corr" in c["variants"][best]]
    low = [p for p in pairs if p[0] < 0.5]
    high = [p for p in pairs if p[0] >= 0.5]
    if low:
        out.append(f"Warning threshold: cells of `{best}` whose predicted site r is below 0.5 ("
                   + ", ".join(f"{n}/site ε={e:g}" for _, _, n, e in low)
                   + f") have Mahalanobis ρ {min(p[1] for p in low):.2f}–{max(p[1] for p in low):.2f}"
                   + (f"; those at or above 0.5 have {min(p[1] for p in high):.2f}–{max(p[1] for p in high):.2f}." if high else "."))
    elif high:
        out.append(f"No cell of `{best}` has a predicted site r below 0.5 (lowest {min(p[0] for p in high):.2f}).")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--controls", type=int, nargs="*", default=list(CONTROLS))
    parser.add_argument("--epsilons", type=float, nargs="*", default=list(EPSILONS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--section", default="dp_moments")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    saved = RESULTS_DIR / f"{args.section}.json"
    if args.render_only:
        result = json.loads(saved.read_text())
    else:
        from ndae.normative import DesignSpec
        from ndae.privacy.delta import DEFAULT_DELTA
        from ndae.privacy.dp_moments import moments_sensitivity
        from ndae.privacy.gaussian_mechanism import statistics_sensitivity

        start = time.time()
        a = anatomy()
        controls, Y = simulate(a, 1000, np.random.default_rng(0))
        norms = np.linalg.norm(DesignSpec().build(controls), axis=1)
        result = {"provenance": provenance(), "draws": args.draws, "delta": DEFAULT_DELTA, "variants": args.variants,
                  "latent_norm": float(np.linalg.norm(Y, axis=1).mean()),
                  "design_norm": [float(norms.min()), float(norms.max())],
                  "sensitivity2": {"old": statistics_sensitivity(("n", "xtx", "xty", "sum_y", "sum_y2", "yty"), *OLD_CLIPS) ** 2,
                                   "minimal": moments_sensitivity(*OLD_CLIPS) ** 2},
                  "configs": []}
        for i, n in enumerate(args.controls):
            for j, epsilon in enumerate(args.epsilons):
                result["configs"].append(run_config(a, n, epsilon, args.draws, args.variants, seed=100 * i + j))
                print(f"{n}/site ε={epsilon:g}: {time.time() - start:.0f} s", flush=True)
        result["seconds"] = time.time() - start
        atomic_write_text(saved, json.dumps(result, indent=1))
    print(write_section(args.section, "DP normative moments: utility (`benchmarks/bench_dp_moments.py`)",
                        render(result), result["provenance"]))


if __name__ == "__main__":
    main()
