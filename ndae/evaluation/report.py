"""report.md and the C-index bar chart of `ndae evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndae.io import atomic_save_figure, atomic_write_text

MODEL_NOTES = {
    "covariates": "baseline 1: clinical covariates only (age, sex, onset if in the manifest, site)",
    "NDAE cosine": "NDAE (the paper's score): cosine of z_sem to the normative z_sem expected for the patient's "
                   "age, sex and site, both in units of the controls' sd, the shared mean kept",
    "NDAE centred cosine": "NDAE: the same cosine after centring both on the controls' mean (this project's "
                           "score before issue 26; it follows the age direction, not the disease)",
    "NDAE prior residual": "NDAE image-space: x − x̂₀ of the DAE's denoiser at fixed noise levels, conditioned on "
                           "the normative z_sem, mean per atlas region, z-scored against the controls' residuals",
    "NDAE prior residual (own z_sem)": "the same, the denoiser conditioned on the patient's own z_sem",
    "NDAE Mahalanobis": "NDAE: Mahalanobis distance of z_sem from its normative expectation",
    "NDAE deviation scores": "NDAE: cosine, mean |z|, max |z|, Mahalanobis",
    "regional normative z": "baseline 2: normative z-scores of regional volumes / intensities (label maps)",
    "voxel-wise normative z": "baseline 6: voxel-wise normative model of the MNI-grid images, mean z per atlas region",
    "voxel-wise normative z (high-pass)": "baseline 7: the same on high-passed images (image − its Gaussian blur "
                                          "within the brain, σ 8 mm): what filtering alone gives",
    "autoencoder": "baseline 3: conv. autoencoder, reconstruction error + latent Mahalanobis",
    "z_sem PCA": "baseline 4: PCA of standardised z_sem, no normative model",
    "brain-age gap": "baseline 5: bias-corrected brain-age gap from z_sem",
    "oracle (true risk)": "Cox on the simulation's true linear predictor",
}


def _cell(mean: Any, sd: Any) -> str:
    if mean is None or (isinstance(mean, float) and not np.isfinite(mean)):
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None and np.isfinite(sd) else f"{mean:.3f}"


def results_table(models: list[dict], oracle: float | None) -> list[str]:
    """Markdown rows: one per model, alone and with covariates, Harrell's and Uno's C."""
    frame = pd.DataFrame(models)
    lines = ["| model | Harrell's C | Uno's C | Harrell's C + covariates | Uno's C + covariates | C* (oracle) |",
             "|---|---|---|---|---|---|"]
    star = f"{oracle:.3f}" if oracle is not None else "–"
    for name in dict.fromkeys(frame["model"]):
        rows = frame[frame["model"] == name].set_index("variant")

        def get(variant, metric):
            if variant not in rows.index:
                return "–"
            return _cell(rows.at[variant, f"{metric}_mean"], rows.at[variant, f"{metric}_sd"])

        lines.append(f"| {name} | {get('alone', 'harrell_c')} | {get('alone', 'uno_c')} | "
                     f"{get('with covariates', 'harrell_c')} | {get('with covariates', 'uno_c')} | {star} |")
    return lines


def _g(value: Any, digits: int = 3) -> str:
    """A number in %g form, '–' for a missing or non-finite one (an overflowed hazard ratio)."""
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _difference(entry: dict | None) -> str:
    if not entry:
        return "–"
    return f"{entry['difference']:+.3f} [{_num(entry['lower'])}, {_num(entry['upper'])}]"


def verdict(entry: dict) -> str:
    """Plain words chosen by where the 95 % interval lies (computed, not typed per model)."""
    lower, upper = entry["lower"], entry["upper"]
    if lower is None or upper is None or not (np.isfinite(lower) and np.isfinite(upper)):
        return "no interval could be computed"
    if lower > 0:
        return "the interval lies above zero: distinguishable from no gain at this sample size"
    if upper < 0:
        return "the interval lies below zero: it does worse than without it at this sample size"
    return "the interval contains zero: not distinguishable from zero at this sample size"


def truth_aware_section(result: dict[str, Any]) -> list[str]:
    """The per-model truth-aware table and a paragraph generated from its numbers."""
    models, expected = result["models"], result.get("expected_c") or {}
    basis = result.get("difference_basis", "observed_c")
    what = "expected C" if basis == "expected_c" else "observed CV C"
    lines = ["## What each model adds (truth-aware metrics)", ""]
    if expected.get("skipped"):
        lines += [f"Expected C skipped: {expected['skipped']}. Paired differences are on the observed CV C, "
                  "with a 95 % interval from resampling source anatomies.", ""]
    else:
        lines += [f"Expected C: mean CV Harrell's C over {expected.get('draws')} fresh survival draws from the cohort's "
                  "survival model (± sd over draws; MC se); paired differences draw by draw on the same draws and "
                  "folds, 95 % interval of the per-draw differences.", ""]
    lines += ["| model | variant | Harrell's C | Uno's C | expected C ± sd (MC se) | risk concordance | "
              "ρ severity | AUROC vs held-out controls | Δ vs covariates [95 %] | Δ vs best baseline [95 %] |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        exp = (f"{_num(m.get('expected_c'))} ± {_num(m.get('expected_c_sd'))} ({_num(m.get('expected_c_mc_se'))})"
               if m.get("expected_c") is not None else "–")
        lines.append(f"| {m['model']} | {m['variant']} | {_num(m.get('harrell_c_mean'))} | {_num(m.get('uno_c_mean'))} | "
                     f"{exp} | {_num(m.get('risk_concordance'))} | {_num(m.get('severity_spearman'))} | "
                     f"{_num(m.get('auroc_patients_vs_held_out_controls'))} | {_difference(m.get('vs_covariates'))} | "
                     f"{_difference(m.get('vs_best_baseline'))} |")
    lines += ["", f"Best baseline (non-NDAE, non-oracle, highest {what}): {result.get('best_baseline') or '–'}.", ""]
    key = "expected_c" if basis == "expected_c" else "harrell_c_mean"
    covariates = next((m for m in models if m["model"] == "covariates" and m["variant"] == "alone"), None)
    sentences = []
    if covariates is not None and result.get("oracle_c_index") is not None:
        sentences.append(f"On these patients C* = {result['oracle_c_index']:.3f}, beside the covariates-only {what} "
                         f"of {_num(covariates.get(key))}: the room the true risk leaves above the covariates is their gap, "
                         f"{result['oracle_c_index'] - covariates[key]:+.3f}." if covariates.get(key) is not None else "")
    for m in models:
        if m["variant"] != "with covariates" or not m.get("vs_covariates"):
            continue
        d = m["vs_covariates"]
        sentences.append(f"{m['model']} adds {d['difference']:+.3f} [{_num(d['lower'])}, {_num(d['upper'])}] to the "
                         f"covariates' {what}: {verdict(d)}.")
    lines += [" ".join(s for s in sentences if s), ""]
    calibration = result.get("calibration") or {}
    held = result.get("held_out_controls") or {}
    if held.get("subjects"):
        lines += [f"### Calibration on {len(held['subjects'])} held-out controls (in no fit)", "",
                  "| normative model | controls | mean z | sd z | median abs z | fraction abs z > 1.96 | in-sample sd z | "
                  "in-sample fraction > 1.96 |", "|---|---|---|---|---|---|---|---|"]
        for name, pair in calibration.items():
            h, t = pair["held_out_controls"], pair["training_controls"]
            lines.append(f"| {name} | {h['subjects']} | {_num(h['mean_z'], 2)} | {_num(h['sd_z'], 2)} | "
                         f"{_num(h.get('median_abs_z'), 2)} | {_num(h['fraction_abs_z_over_1_96'])} | "
                         f"{_num(t['sd_z'], 2)} | {_num(t['fraction_abs_z_over_1_96'])} |")
        lines += ["", "Calibrated z: mean 0, sd 1, median abs z 0.674, fraction above 1.96 = 0.05.", ""]
    else:
        lines += ["No controls were held out (--held-out-controls 0): no AUROC and no out-of-sample calibration.", ""]
    return lines


SWAP_THRESHOLD = 0.05  # below: the decoder's x̂₀ hardly depends on z_sem (docs/dae.md, "z_sem use")


def z_sem_use_sentence(prior: dict | None) -> str:
    """The swap test in words, chosen by its number."""
    if not prior or prior.get("relative_change") is None:
        return ""
    change = prior["relative_change"]
    head = (f"z_sem use (swap test): denoising with another subject's z_sem moves the DAE's x̂₀ by "
            f"{100 * change:.2g} % of the residual itself")
    if change < SWAP_THRESHOLD:
        return (head + f", under {100 * SWAP_THRESHOLD:.0f} %: the decoder hardly uses z_sem, so the prior residual "
                "conditioned on the normative z_sem is a denoiser's residual, not a normative one (the two "
                f"conditionings' maps correlate {prior.get('normative_vs_own_map_correlation', float('nan')):.4f}).")
    return head + f": the decoder uses z_sem, and the normative conditioning changes the residual."


def best_baseline_sentence(best: dict, baseline: str | None, what: str) -> str:
    """The NDAE model beside the best non-NDAE baseline, on the same folds, read from the interval."""
    d = best.get("vs_best_baseline")
    if not baseline or not d or d.get("difference") is None:
        return f"{best['model']} against the baselines: no best baseline was compared."
    lower, upper = d.get("lower"), d.get("upper")
    interval = f"{d['difference']:+.3f} [{_num(lower)}, {_num(upper)}] in {what}"
    if lower is None or upper is None or not (np.isfinite(lower) and np.isfinite(upper)):
        return f"{best['model']} against the best baseline ({baseline}): {interval}, no interval could be computed."
    if lower > 0:
        return f"{best['model']} ranks patients better than the best baseline ({baseline}): {interval}."
    if upper < 0:
        return f"The best baseline ({baseline}) ranks patients better than {best['model']}: {interval}."
    return f"{best['model']} is not distinguishable from the best baseline ({baseline}): {interval}."


def headline(result: dict[str, Any]) -> list[str]:
    """The report's first lines: which NDAE model adds most to the covariates, with its interval, in
    words chosen by the interval; and whether the decoder uses z_sem."""
    basis = result.get("difference_basis", "observed_c")
    what = "expected C" if basis == "expected_c" else "observed CV C"
    ndae = [m for m in result["models"] if m["model"].startswith("NDAE") and m["variant"] == "with covariates"
            and m.get("vs_covariates") and m["vs_covariates"].get("difference") is not None]
    lines = []
    if ndae:
        best = max(ndae, key=lambda m: m["vs_covariates"]["difference"])
        d = best["vs_covariates"]
        lines.append(f"**Verdict.** The NDAE model that adds most to the covariates is {best['model']}: "
                     f"{d['difference']:+.3f} [{_num(d['lower'])}, {_num(d['upper'])}] in {what} "
                     f"({verdict(d)}; {len(ndae)} NDAE models compared, so the best of them is picked after the fact).")
        lines.append(best_baseline_sentence(best, result.get("best_baseline"), what))
    sentence = z_sem_use_sentence(result.get("prior_residuals"))
    if sentence:
        lines.append(sentence)
    return lines + [""] if lines else []


def write_report(result: dict[str, Any], path: Path) -> None:
    from ndae.reporting.normative_figures import normative_figure_lines

    options, subjects = result["options"], result["subjects"]
    hazard = result["cosine_hazard_ratio"]
    unit, per_sd = hazard["per_unit"], hazard["per_sd"]
    km = result["kaplan_meier_cosine"]
    lines = [
        "# NDAE evaluation", "",
        *headline(result),
        f"Manifest `{result['manifest']}`" + (f", truth `{result['truth']}`" if result["truth"] else "") + ".",
        f"{subjects['controls']} controls (DAE, normative models and baselines trained on them), "
        f"{subjects['patients']} patients ({subjects['events']} events). DAE preset `{options['config']}`, "
        f"{result['dae'].get('steps')} steps; seed {options['seed']}; created {result['created']} on {result['machine']}.",
        "",
        "## Cross-validated C-index (patients)", "",
        f"{options['folds']}-fold cross-validation, stratified by event, the same folds for every model; "
        f"Cox with L2 penalty {options['penalizer']:g}; mean ± sd over folds. '+ covariates': the model's features "
        "with age, sex (and onset when the manifest has it).", "",
        *results_table(result["models"], result["oracle_c_index"]), "",
    ]
    if result["oracle_c_index"] is not None:
        lines += [f"C* = {result['oracle_c_index']:.3f}: Harrell's C of the true risk on all patients (the ceiling).", ""]
    lines += truth_aware_section(result)
    lines += ["Models:", ""] + [f"- **{name}**: {note}" for name, note in MODEL_NOTES.items()
                                 if any(m["model"] == name for m in result["models"])] + [""]
    if result["skipped_baselines"]:
        lines += ["Skipped baselines:", ""] + [f"- {k}: {v}" for k, v in result["skipped_baselines"].items()] + [""]
    if result["failed_models"]:
        lines += ["Models whose Cox fit failed:", ""] + [f"- {k}: {v}" for k, v in result["failed_models"].items()] + [""]
    lines += [
        "## NDAE cosine score", "",
        f"Cox on the cosine alone (all {hazard['n']} patients, {hazard['events']} events): HR per SD "
        f"({_g(per_sd['sd'])}) {_g(per_sd['hazard_ratio'])} (95 % CI {_g(per_sd['lower_95'])}–{_g(per_sd['upper_95'])}, "
        f"p = {_g(unit['p'], 2)}); per unit of cosine {_g(unit['hazard_ratio'])} ({_g(unit['lower_95'])}–"
        f"{_g(unit['upper_95'])}; '–' where it overflows: the cosine keeps the latent's shared mean, so it varies "
        "little across patients and one unit is many SDs). Higher cosine = closer to the healthy expectation.", "",
        f"Kaplan–Meier by cosine tertile: log-rank p = {km['p_value']:.2g}; median survival (months) "
        + ", ".join(f"{k} {('not reached' if v is None else f'{v:.1f}')}" for k, v in km["median_survival_months"].items())
        + ".", "",
        "![KM by cosine tertile](km_cosine.png)", "", "![C-index](c_index.png)", "",
        *normative_figure_lines(result.get("normative_figures")),
        "## Files", "",
        "`latents.npz`, `normative/`, `deviations.csv`, `patients.csv` (features per patient), "
        "`survival/cv_per_fold.csv`, `survival/cox.json` + `hazard_ratios.csv` (Cox on the cosine, all patients), `baselines/`, `dae/`, `evaluation.json`.", "",
        "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["timings"].items()), "",
    ]
    atomic_write_text(path, "\n".join(lines))
    from ndae.reporting.html import write_report_html

    write_report_html(path)


def c_index_figure(summary: pd.DataFrame, oracle: float | None, path: Path) -> None:
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(summary["model"]))
    figure = Figure(figsize=(7, 0.45 * len(names) + 1.5))
    axis = figure.subplots()
    y = np.arange(len(names))
    for offset, variant, colour in ((-0.18, "alone", "tab:blue"), (0.18, "with covariates", "tab:orange")):
        rows = summary[summary["variant"] == variant].set_index("model")
        means = [rows.at[n, "harrell_c_mean"] if n in rows.index else np.nan for n in names]
        sds = [rows.at[n, "harrell_c_sd"] if n in rows.index else np.nan for n in names]
        axis.barh(y + offset, means, height=0.34, xerr=sds, color=colour, label=variant, capsize=2)
    axis.axvline(0.5, color="grey", lw=0.8, ls=":")
    if oracle is not None:
        axis.axvline(oracle, color="black", lw=1.0, ls="--", label=f"C* = {oracle:.3f}")
    axis.set_yticks(y, names)
    axis.invert_yaxis()
    axis.set_xlim(0.3, 1.0)
    axis.set_xlabel("Harrell's C (cross-validated, mean ± sd over folds)")
    axis.legend(loc="lower right", fontsize=8)
    atomic_save_figure(path, figure)
