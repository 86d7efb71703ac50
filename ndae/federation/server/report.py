"""The federated run's `report.md`: what ran, which sites answered, privacy spent, the DAE rounds,
the normative model and the survival results, all read from the run's summary and metrics; and
the report of a run that stopped. What a private run's report says differently (its ledgers, noised
counts, what the sites kept) comes from the run's `release_policy`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ndae.federation.server.release_policy import ReleasePolicy
from ndae.io import atomic_write_text

__all__ = ["added_value_lines", "cox_model_lines", "added_value_reading", "latent_probe_lines", "prior_residual_lines", "voxelwise_lines", "write_failure_report", "write_report"]


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_report(run_dir: Path, config, summary: dict, metrics: list[dict]) -> Path:
    survival = summary["survival"]
    releases = ReleasePolicy(config)
    lines = ["# Federated NDAE run", "", *releases.opening_lines(summary), *headline_lines(summary, metrics, config),
             f"- sites: {len(summary['sites'])} ({', '.join(summary['sites'])}); min-sites {config.min_sites}",
             f"- DAE: preset `{config.dae_preset}`, {config.rounds} round(s) of {config.strategy} × "
             f"{config.local_epochs} local epoch(s), seed {config.seed}",
             f"- survival mode: `{survival['mode']}` (" + _survival_mode_line(releases, survival) + ")",
             f"- wall time: {_fmt(summary['timings'].get('total_s'), 1)} s (DAE training "
             f"{_fmt(summary['timings'].get('dae_training_s'), 1)} s)", "",
             "## Sites", "", "| site | controls | patients | training rounds answered | patients scored | events |",
             "|---|---|---|---|---|---|"]
    for site, info in summary["sites"].items():
        counts = survival["counts"].get(site, {})
        lines.append(f"| {site} | {_count(info['controls'])} | {_count(info['patients'])} | "
                     f"{summary['participation'].get(site, 0)}/{config.rounds} | {counts.get('patients', '–')} | "
                     f"{counts.get('events', '–')} |")
    lines += ["", "## Missing sites", ""]
    if summary["missing"]:
        lines += ["| phase | round | site | reason |", "|---|---|---|---|"]
        for entry in summary["missing"]:
            lines.append(f"| {entry['phase']} | {entry['round'] or ''} | {entry['site']} | "
                         f"{entry['reason'].splitlines()[0][:160] if entry['reason'] else ''} |")
    else:
        lines.append("None: every site answered every phase.")
    lines += releases.ledger_lines(summary)
    lines += ["", "## DAE training (per round)", "", "| round | sites | mean loss | seconds |", "|---|---|---|---|"]
    for entry in metrics:
        if entry.get("phase") == "dae":
            lines.append(f"| {entry['round']} | {len(entry['sites'])} | {_fmt(entry.get('train_loss_mean'), 4)} | "
                         f"{_fmt(entry.get('seconds'), 1)} |")
    from ndae.reporting.federated_figures import normative_lines, survival_figure_lines, training_loss_lines

    lines += training_loss_lines(run_dir, metrics)
    lines += ["", f"Normative model: {summary['normative']['n_controls']:.0f} controls{releases.noisy_count} from "
              f"{', '.join(summary['normative']['sites'])} (`normative/`)."]
    lines += [f"- **warning**: {line}" for line in summary["normative"].get("warnings", [])]
    lines += normative_lines(run_dir, summary)
    from ndae.reporting.score_distributions import score_distribution_lines

    lines += score_distribution_lines(run_dir, survival.get("score_distributions"))
    lines += latent_probe_lines(summary.get("latent_probe"))
    lines += prior_residual_lines(summary.get("prior_residuals"), survival, releases.noisy_count)
    lines += ["", "## Survival", ""] + cox_model_lines(survival)
    pooled = survival.get("c_index_pooled")
    if pooled:
        lines.append(f"- C-index (Harrell, pooled): **{_fmt(pooled.get('estimate'))}** on the training data, "
                     f"optimism-corrected {_fmt(pooled.get('corrected'))} (95% interval on left-out patients over "
                     f"{pooled.get('n_boot')} bootstrap refits: {_fmt(pooled.get('lower'))}–{_fmt(pooled.get('upper'))})")
    lines += added_value_lines(survival)
    lines += voxelwise_lines(survival.get("voxelwise"), summary.get("voxelwise"), survival)
    if (survival.get("km") or {}).get("group_sizes"):
        lines += ["", "![Kaplan–Meier by within-site risk tertile](survival/km_risk_within_site_tertiles.png)"]
    else:
        lines += releases.km_withheld_lines(survival)
    if "km_pooled" in survival:
        lines += ["", f"![Kaplan–Meier by pooled risk tertile](survival/km_risk.png) (log-rank p = "
                  f"{_fmt(survival['km_pooled'].get('p_value'), 3)})"]
    lines += survival_figure_lines(survival)
    lines += ["", "Files: `config.json`, `dae/checkpoint.pt`, `normative/`, "
              + ("`deviations.csv`, " if survival["mode"] == "pooled" else "")
              + "`survival/`, `figures/`, `metrics.jsonl`, `status.json`, `summary.json`; `report.html` is this report "
              "in one self-contained file (figures embedded) to share.", ""]
    path = Path(run_dir) / "report.md"
    atomic_write_text(path, "\n".join(lines))
    from ndae.reporting.html import write_report_html

    write_report_html(path)
    return path


def cox_model_lines(survival: dict) -> list[str]:
    """The Cox model's coefficients and within-site C-index, or, where the likelihood is monotone,
    why no finite model exists (the fitter's own words)."""
    head = (f"{_count(survival.get('patients'))} patients, {_count(survival.get('events'))} events; Cox model "
            f"stratified by site on {', '.join(survival['covariates'])}")
    if "cox_refused" in survival:
        return [head + ": **no finite Cox model could be fitted**, so no coefficients, C-index or Kaplan–Meier "
                "curves by risk tertile.", "", f"Reason: {survival['cox_refused']}"]
    lines = [head + " (`survival/cox.json`, `survival/hazard_ratios.csv`).", "",
             "| covariate | coef | se | hazard ratio | 95% CI |", "|---|---|---|---|---|"]
    for name, coef in (survival.get("coef") or {}).items():
        se = (survival.get("se") or {}).get(name)
        lines.append(f"| {name} | {_fmt(coef, 4)} | {_fmt(se, 4)} | {_fmt(float(np.exp(coef)), 3)} | "
                     f"{_hazard_interval(coef, se)} |")
    lines += ["", f"- C-index (Harrell, within site, training data): **{_fmt(survival.get('c_index_within_site'))}**"]
    refused = (survival.get("covariates_only") or {}).get("cox_refused")
    if refused:
        lines.append(f"- The covariates-only model has no finite fit: {refused}")
    return lines


def voxelwise_lines(result: dict | None, info: dict | None, survival: dict) -> list[str]:
    """The voxel-wise normative baseline beside the NDAE model: its Cox model, and the paired
    differences in C (baseline vs covariates only, NDAE vs baseline) on the same pairs."""
    lines = ["", "## Beside the voxel-wise normative baseline", ""]
    if not result:
        why = (info or {}).get("not_computed", "not run")
        return lines + [f"Not computed: {why}."]
    if "not_computed" in result:
        return lines + [f"Not computed: {result['not_computed']}."]
    ndae = ", ".join(survival.get("features", []))
    lines += [f"The voxel-wise normative model (what a site without a DAE can run: each voxel's intensity given age, "
              f"sex and site, fitted from the sites' summed per-voxel statistics; {info['voxels_modelled']} voxels at "
              f"stride {info['stride']} on {info['n_controls']:.0f} controls) gives each patient the mean voxel z per "
              f"atlas region; a Cox model on {', '.join(result['covariates'])} (stratified by site; "
              "`survival/voxelwise/`).", "",
              "| comparison (first vs second) | estimate | C of the first | C of the second | difference (95% CI) | CI from |",
              "|---|---|---|---|---|---|"]
    labels = {"vs_covariates": "voxel-wise vs covariates only", "ndae_vs_voxelwise": f"NDAE ({ndae}) vs voxel-wise"}
    readings: dict[str, tuple[str, str, dict]] = {}  # per comparison: the out-of-sample estimate where there is one
    for kind in ("cross_validated", "within_site"):
        for name, label in labels.items():
            e = result.get(kind, {}).get(name)
            if e is None:
                continue
            if "not_computed" in e:
                why = e["not_computed"].split(". ")[0][:160]
                lines.append(f"| {label} | {kind.replace('_', '-')} | not computed: {why} | | | |")
                continue
            lines.append(f"| {label} | {e['kind']} | {_fmt(e['c_model'])} | {_fmt(e['c_reference'])} | "
                         f"{_fmt(e['difference'])} ({_fmt(e['lower'])} to {_fmt(e['upper'])}) | {e['ci']} |")
            readings.setdefault(name, (label, kind, e))
    for label, kind, e in readings.values():
        lines += ["", f"- {label} ({e['kind']}): " + _comparison_reading(e)]
    if any(kind == "within_site" for _, kind, _ in readings.values()):
        lines += ["", "In-sample readings are optimistic for the model with more coefficients (here the voxel-wise "
                  f"model's {len(result['features'])} regions): no patient row left a site to cross-validate."]
    lines += ["", "| voxel-wise covariate | coef | se | hazard ratio | 95% CI |", "|---|---|---|---|---|"]
    for name, coef in result["coef"].items():
        se = result["se"].get(name)
        lines.append(f"| {name} | {_fmt(coef, 4)} | {_fmt(se, 4)} | {_fmt(float(np.exp(coef)), 3)} | "
                     f"{_hazard_interval(coef, se)} |")
    return lines


def _comparison_reading(e: dict) -> str:
    d, lower, upper = e["difference"], e["lower"], e["upper"]
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in (d, lower, upper)):
        return "no CI could be computed."
    interval = f"{d:+.3f} (95% CI {lower:+.3f} to {upper:+.3f})"
    if lower > 0:
        return f"the first model ranks patients better, {interval}."
    if upper < 0:
        return f"the first model ranks patients worse, {interval}."
    return f"{interval}: the CI includes 0, no difference distinguishable at this sample size."


def prior_residual_lines(info: dict | None, survival: dict, noisy: str = "") -> list[str]:
    """The regional deviations from the diffusion prior: fitted or why not, whether the Cox model
    takes them, and the swap test (does the decoder use z_sem at all?). `noisy`: what follows the
    count of controls (`ReleasePolicy.noisy_count`)."""
    if not info:
        return []
    lines = ["", "## Regional deviations from the diffusion prior", ""]
    if "not_computed" in info:
        lines.append(f"Not computed: {info['not_computed']}.")
        return lines + ([f"- {info['survival']}."] if info.get("survival") else [])
    lines.append(f"Each site's residual x − x̂₀(x_t | z_sem) of the DAE's denoiser (normative z_sem of the subject's "
                 f"covariates, and own z_sem), averaged per atlas region ({len(info['regions']) // 2} regions); a "
                 f"normative model of the residuals fitted on {info['n_controls']:.0f} controls{noisy} from "
                 f"{', '.join(info['sites'])} from their summed statistics (`{info['model']}/`); patients' z-scores "
                 "`z_prior_<region>`, `z_prior_own_<region>` computed at their sites.")
    lines += [f"- **warning**: {line}" for line in info.get("warnings", [])]
    used = [f for f in survival.get("features", []) if f.startswith("z_prior_")]
    lines.append(f"- In the survival model: **{', '.join(used)}**." if used else
                 "- Not in the survival model (run config survival-features may name them, or \"prior\" for every "
                 "region).")
    if info.get("survival"):
        lines.append(f"- {info['survival']}.")
    swap = survival.get("prior_swap") or {}
    if "relative_change" in swap:
        lines.append(f"- Swap test (mean over {swap['subjects']} subjects of {', '.join(swap['sites'])}): "
                     + swap_reading(swap["relative_change"]))
    elif swap:
        lines.append(f"- Swap test not reported: {swap['not_computed']}.")
    return lines


def swap_reading(change: float) -> str:
    """The swap test in words chosen by its number (the threshold of `ndae evaluate`'s report)."""
    from ndae.evaluation.report import SWAP_THRESHOLD

    head = (f"replacing a subject's z_sem by another's moves the denoiser's x̂₀ by {100 * change:.2g} % of the "
            "residual's size")
    if change < SWAP_THRESHOLD:
        return (head + f", under {100 * SWAP_THRESHOLD:.0f} %: the decoder hardly uses z_sem, so the 'normative' "
                "conditioning of the prior residual is nearly empty (it is a learned denoiser's residual).")
    return head + ": the decoder uses z_sem, and the normative conditioning changes the residual."


def headline_lines(summary: dict, metrics: list[dict] = (), config=None) -> list[str]:
    """The report's first lines: its verdict (`ndae.federation.server.verdict`), every clause
    chosen by the run's numbers."""
    from ndae.federation.server.verdict import verdict_lines

    private = (config is not None and ReleasePolicy(config).private) or "privacy" in summary
    return verdict_lines(summary, metrics, private=private,
                         target_epsilon=float(getattr(config, "target_epsilon", 0.0) or 0.0))


def latent_probe_lines(probe: dict | None) -> list[str]:
    """Does z_sem carry age? The trained encoder's probe beside the initial encoder's (`latent_probe`)."""
    if not probe:
        return []
    lines = ["", "## Does z_sem carry meaning? (age probe)", "", f"{probe['method']}; the yardstick is the same "
             "encoder at the weights federated training started from (random convolutional features already "
             "predict some age).", "", "| encoder | r (predicted vs true age) | RMSE (y) | RMSE of the mean age (y) | "
             "controls |", "|---|---|---|---|---|"]
    for name, label in (("trained", "trained (global EMA)"), ("init", "initial weights")):
        p = probe.get(name, {})
        if "r" in p:
            lines.append(f"| {label} | {_fmt(p['r'])} | {_fmt(p['rmse'], 1)} | {_fmt(p['mean_rmse'], 1)} | "
                         f"{p['n_controls']:.0f} |")
        else:
            lines.append(f"| {label} | not computed: {p.get('not_computed', '')} | | | |")
    if "trained_beats_init" in probe:
        lines += ["", f"Trained minus initial r: {probe['trained']['r'] - probe['init']['r']:+.3f} (one held-out split "
                  "per site, no interval; how to read a probe: `docs/dae.md`)."]
    from ndae.federation.server.verdict import age_probe_clause

    if "rmse" in probe.get("trained", {}):
        lines += ["", "Reading: " + age_probe_clause(probe)]
    return lines


def added_value_lines(survival: dict) -> list[str]:
    """'What the imaging adds': the covariates-only and the full model's C on the same pairs, the
    difference with its CI and a reading chosen by the CI, for each estimate the run made."""
    added = survival.get("added_value")
    if not added:
        return []
    features, covariates = ", ".join(added["features"]), ", ".join(added["covariates"]) or "none"
    lines = ["", "## What the imaging adds", "",
             f"The full Cox model ({covariates} + {features}) against the covariates-only model ({covariates}; "
             "both stratified by site, the same patients and pairs; `survival/covariates_only/`)."]
    if "not_computed" in added:
        return lines + ["", f"Not computed: {added['not_computed']}."]
    estimates = [(key, added[key]) for key in ("cross_validated", "within_site") if key in added]
    lines += ["", "| estimate | covariates-only C | full model C | difference (95% CI) | CI from |", "|---|---|---|---|---|"]
    for _, e in estimates:
        if "not_computed" in e:
            continue
        lines.append(f"| {e['kind']} | {_fmt(e['c_reference'])} | {_fmt(e['c_model'])} | {_fmt(e['difference'])} "
                     f"({_fmt(e['lower'])} to {_fmt(e['upper'])}) | {e['ci']} |")
    lines += [f"- {key.replace('_', '-')} estimate: not computed ({e['not_computed']})"
              for key, e in estimates if "not_computed" in e]
    usable = [(key, e) for key, e in estimates if "not_computed" not in e]
    if usable:
        key, e = usable[0]  # cross-validated where the server held the rows, else in-sample within-site
        where = " on the patients both models were fitted on" if key == "within_site" else ""
        lines += ["", f"Reading ({e['kind']}): {added_value_reading(e, features, covariates, where)}"]
        if key == "within_site":
            lines.append("The C's are on the patients the models were fitted on, so the full model's extra "
                         "coefficients make the difference optimistic; no patient row left a site to cross-validate.")
    return lines


def added_value_reading(estimate: dict, features: str, covariates: str, where: str = "") -> str:
    """The plain-words reading of a difference in C, chosen by where its CI lies."""
    d, lower, upper = estimate["difference"], estimate["lower"], estimate["upper"]
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in (d, lower, upper)):
        return "no CI could be computed (too few comparable pairs)."
    interval = f"{d:+.3f} (95% CI {lower:+.3f} to {upper:+.3f})"
    if lower > 0:
        return (f"adding {features} to {covariates} raises Harrell's C by {interval}: the imaging adds to the "
                f"covariates{where}.")
    if upper < 0:
        return (f"adding {features} to {covariates} changes Harrell's C by {interval}: the model ranks patients "
                f"worse with the imaging than with the covariates alone{where}.")
    return (f"adding {features} to {covariates} changes Harrell's C by {interval}: the CI includes 0, so what the "
            f"imaging adds is not distinguishable from nothing at this sample size{where}.")


def _hazard_interval(coef, se) -> str:
    """exp(coef ± 1.96 se): the Wald interval of the hazard ratio (– without a finite se)."""
    if not isinstance(se, (int, float)) or not np.isfinite(se) or not np.isfinite(coef):
        return "–"
    return f"{_ratio(np.exp(coef - 1.96 * se))}–{_ratio(np.exp(coef + 1.96 * se))}"


def _ratio(value: float) -> str:
    """Three decimals, or three significant digits beyond 1000 (an unbounded CI of an overfit model)."""
    return f"{value:.3f}" if value < 1000 else f"{value:.3g}"


def _count(value) -> str:
    return "withheld" if value is None or (isinstance(value, (int, float)) and value < 0) else str(value)


def _survival_mode_line(releases: ReleasePolicy, survival: dict) -> str:
    if survival["mode"] != "pooled":
        return "no patient row left any site: Newton rounds of summed gradients/Hessians"
    return releases.pooled_rows_clause()


def write_failure_report(run_dir: Path, config, error: str, missing: list[dict]) -> Path:
    """The report of a run that stopped: the error and every site's reason, as the sites gave them."""
    lines = ["# Federated NDAE run: failed", "", f"- error: {error.splitlines()[0][:500] if error else ''}",
             f"- privacy: {ReleasePolicy(config).on_off}; survival mode `{config.effective_survival_mode}`", "",
             "## Sites that refused or did not answer", ""]
    if missing:
        lines += ["| phase | round | site | reason |", "|---|---|---|---|"]
        for entry in missing:
            reason = _site_reason(entry.get("reason", ""))
            lines.append(f"| {entry['phase']} | {entry['round'] or ''} | {entry['site']} | {reason} |")
    else:
        lines.append("None recorded.")
    # A failed rerun must not replace the report of a run that completed before it.
    path = Path(run_dir) / ("failure.md" if (Path(run_dir) / "report.md").exists() else "report.md")
    atomic_write_text(path, "\n".join(lines) + "\n")
    from ndae.reporting.html import write_report_html

    write_report_html(path)
    return path


def _site_reason(reason: str) -> str:
    """The site's own message from an error reply (Flower wraps it in the exception's repr)."""
    first = reason.strip().splitlines()[0] if reason.strip() else ""
    return first.replace("|", "\\|")[:300]
