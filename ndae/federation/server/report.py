"""The federated run's report: survival outputs, Kaplan–Meier figures and `report.md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndae.io import atomic_save_figure, atomic_write_json, atomic_write_text, finite_or_null

TERTILES = ("low", "middle", "high")




def save_federated_cox(out: Path, fitter, covariates: list[str]) -> None:
    """`cox.json` + `hazard_ratios.csv`, the same files `CoxModel.save` writes for pooled mode."""
    atomic_write_json(out / "cox.json", finite_or_null({
        "model": "cox_proportional_hazards", "ties": "efron", "fitted_by": "federated Newton-Raphson",
        "strata": ["site"], "covariates": covariates,
        "coef": dict(zip(covariates, fitter.params_.tolist())),
        "se": dict(zip(covariates, fitter.standard_errors_.tolist())),
        "variance_matrix": fitter.variance_matrix_.to_numpy().tolist(),
        "n": fitter.n_, "events": fitter.events_, "log_likelihood": fitter.log_likelihood_,
        "message_rounds": fitter.n_rounds_, "sites": sorted(fitter.sites_)}))
    atomic_write_text(out / "hazard_ratios.csv", fitter.summary.to_csv(index=False))


def fit_pooled_cox(table: pd.DataFrame, covariates: list[str]):
    """lifelines' stratified (by site) Efron Cox on the pooled rows, run to full convergence
    (its default stops ~1e-6 early), so pooled and federated modes agree to rounding."""
    from lifelines import CoxPHFitter

    from ndae.survival._validation import validate_survival_frame

    validate_survival_frame(table, covariates, "time", "event", ["site"], where="pooled Cox fit")
    columns = [*covariates, "time", "event", "site"]
    frame = table[columns].copy()
    frame["event"] = frame["event"].astype(int)
    return CoxPHFitter().fit(frame, "time", "event", strata=["site"],
                             fit_options={"precision": 1e-13, "r_precision": 1e-15})


def save_pooled_cox(out: Path, fitter, covariates: list[str]) -> None:
    from ndae.survival.cox import hazard_ratio_table

    coef, se = fitter.params_.reindex(covariates), fitter.standard_errors_.reindex(covariates)
    atomic_write_json(out / "cox.json", finite_or_null({
        "model": "cox_proportional_hazards", "ties": "efron", "fitted_by": "lifelines CoxPHFitter on pooled rows",
        "strata": ["site"], "covariates": covariates, "coef": dict(zip(covariates, coef.tolist())),
        "se": dict(zip(covariates, se.tolist())), "variance_matrix": fitter.variance_matrix_.to_numpy().tolist(),
        "means": dict(zip(covariates, fitter._norm_mean.reindex(covariates).tolist())),
        "n": int(fitter._n_examples), "events": int(fitter.event_observed.sum()),
        "log_likelihood": float(fitter.log_likelihood_), "concordance_index_train": float(fitter.concordance_index_)}))
    atomic_write_text(out / "hazard_ratios.csv", hazard_ratio_table(coef, se).to_csv(index=False))


def km_from_counts(rows: np.ndarray, path: Path) -> dict[str, Any]:
    """Kaplan–Meier curves from summed (group, month, event, count) rows; writes the PNG."""
    from lifelines import KaplanMeierFitter
    from matplotlib.figure import Figure

    frame = pd.DataFrame(np.asarray(rows).reshape(-1, 4), columns=["group", "month", "event", "count"])
    result: dict[str, Any] = {"figure": path.name, "grouping": "tertiles of x·beta within each site",
                              "median_survival_months": {}, "group_sizes": {}}
    if frame.empty:
        return result
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    for index, (label, colour) in enumerate(zip(TERTILES, ("tab:blue", "tab:orange", "tab:red"))):
        part = frame[frame["group"] == index]
        if part.empty:
            continue
        n = int(part["count"].sum())
        fitter = KaplanMeierFitter(label=f"{label} risk (n={n})").fit(
            part["month"], part["event"], weights=part["count"])
        fitter.plot_survival_function(ax=axis, color=colour, ci_show=False)
        median = float(fitter.median_survival_time_)
        result["median_survival_months"][label] = median if np.isfinite(median) else None
        result["group_sizes"][label] = n
    axis.set_xlabel("time (months)")
    axis.set_ylabel("survival probability")
    axis.set_ylim(0, 1.02)
    axis.set_title("Kaplan–Meier by within-site tertile of Cox risk (aggregated counts)")
    atomic_save_figure(path, figure)
    return result


def pooled_survival_extras(table: pd.DataFrame, beta: np.ndarray, covariates: list[str], out: Path) -> dict:
    """Pooled mode only (the server holds the rows): global Harrell's C with a bootstrap CI and
    KM curves by global tertile of the Cox risk and of the first deviation score."""
    from ndae.survival.kaplan_meier import kaplan_meier_by_tertile
    from ndae.survival.metrics import harrell_c_index_ci

    table = table.copy()
    table["risk"] = table[covariates].to_numpy(float) @ np.asarray(beta, float)
    extras: dict[str, Any] = {"c_index_pooled": harrell_c_index_ci(table["time"], table["event"], table["risk"],
                                                                   n_boot=200, seed=0)}
    if len(table) >= 6:
        km = kaplan_meier_by_tertile(table, "risk", path=out / "km_risk.png",
                                     title="Kaplan–Meier by tertile of Cox risk (pooled)")
        extras["km_pooled"] = {**km.to_json(), "figure": "km_risk.png"}
    return extras


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_report(run_dir: Path, config, summary: dict, metrics: list[dict]) -> Path:
    survival = summary["survival"]
    lines = ["# Federated NDAE run", "",
             f"- sites: {len(summary['sites'])} ({', '.join(summary['sites'])}); min-sites {config.min_sites}",
             f"- DAE: preset `{config.dae_preset}`, {config.rounds} round(s) of {config.strategy} × "
             f"{config.local_epochs} local epoch(s), seed {config.seed}",
             f"- survival mode: `{survival['mode']}` (" + _survival_mode_line(config, survival) + ")",
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
    if "privacy" in summary:
        lines += ["", "## Privacy (per site, from its hash-chained ledger)", "",
                  f"DP-SGD (Opacus `{config.dp_mode}`, max-grad-norm {config.max_grad_norm:g}) and Gaussian "
                  f"normative moments (noise multiplier {config.moments_noise_multiplier:g}, clips: design row "
                  f"{config.moments_covariate_clip:g}, z_sem {config.moments_latent_clip:g}); epsilon composed over "
                  "every release of the site (RDP). Each site signs its ledger head with its own key; "
                  "`ndae audit RUN --keys REGISTRY` verifies the chains, the heads in `privacy/heads.json` and their "
                  "signatures against the consortium's registered keys.", "",
                  "| site | epsilon spent | delta | budget epsilon | releases | final ledger hash |",
                  "|---|---|---|---|---|---|"]
        for site, head in sorted(summary["privacy"].items()):
            lines.append(f"| {site} | {_fmt(head.get('epsilon'), 4)} | {head.get('delta', 0):.3g} | "
                         f"{_fmt(head.get('budget_epsilon'))} | {head.get('entries')} | `{head.get('final_hash')}` |")
    lines += ["", "## DAE training (per round)", "", "| round | sites | mean loss | seconds |", "|---|---|---|---|"]
    for entry in metrics:
        if entry.get("phase") == "dae":
            lines.append(f"| {entry['round']} | {len(entry['sites'])} | {_fmt(entry.get('train_loss_mean'), 4)} | "
                         f"{_fmt(entry.get('seconds'), 1)} |")
    noisy = " (noisy DP count)" if config.privacy else ""
    lines += ["", f"Normative model: {summary['normative']['n_controls']:.0f} controls{noisy} from "
              f"{', '.join(summary['normative']['sites'])} (`normative/`)."]
    lines += [f"- **warning**: {line}" for line in summary["normative"].get("warnings", [])]
    lines += ["",
              "## Survival", "",
              f"{_count(survival.get('patients'))} patients, {_count(survival.get('events'))} events; Cox model stratified by "
              f"site on {', '.join(survival['covariates'])} (`survival/cox.json`, `survival/hazard_ratios.csv`).", "",
              "| covariate | coef | se | hazard ratio |", "|---|---|---|---|"]
    for name, coef in survival["coef"].items():
        lines.append(f"| {name} | {_fmt(coef, 4)} | {_fmt(survival['se'].get(name), 4)} | {_fmt(float(np.exp(coef)), 3)} |")
    lines += ["", f"- C-index (Harrell, within site, training data): **{_fmt(survival['c_index_within_site'])}**"]
    pooled = survival.get("c_index_pooled")
    if pooled:
        lines.append(f"- C-index (Harrell, pooled, training data): **{_fmt(pooled.get('estimate'))}** "
                     f"(95% bootstrap CI {_fmt(pooled.get('lower'))}–{_fmt(pooled.get('upper'))})")
    if survival.get("km", {}).get("group_sizes"):
        lines += ["", "![Kaplan–Meier by within-site risk tertile](survival/km_risk_within_site_tertiles.png)"]
    elif config.privacy:
        lines += ["", "Kaplan–Meier counts per month are row-level on a small site: private sites keep them."]
    if "km_pooled" in survival:
        lines += ["", f"![Kaplan–Meier by pooled risk tertile](survival/km_risk.png) (log-rank p = "
                  f"{_fmt(survival['km_pooled'].get('p_value'), 3)})"]
    lines += ["", "Files: `config.json`, `dae/checkpoint.pt`, `normative/`, "
              + ("`deviations.csv`, " if survival["mode"] == "pooled" else "")
              + "`survival/`, `metrics.jsonl`, `status.json`, `summary.json`.", ""]
    path = Path(run_dir) / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _count(value) -> str:
    return "withheld" if value is None or (isinstance(value, (int, float)) and value < 0) else str(value)


def _survival_mode_line(config, survival: dict) -> str:
    if survival["mode"] != "pooled":
        return "no patient row left any site: Newton rounds of summed gradients/Hessians"
    if config.privacy:
        from ndae.federation.site.privacy import POOLED_ROW_CONTENT

        held = "; ".join(f"{k}: {v}" for k, v in POOLED_ROW_CONTENT.items())
        return f"consenting sites shared patients' deviation scores, sex and event, with {held}"
    return "sites shared patients' deviation scores with their subject ids, age, sex and follow-up"


def write_failure_report(run_dir: Path, config, error: str, missing: list[dict]) -> Path:
    """The report of a run that stopped: the error and every site's reason, as the sites gave them."""
    lines = ["# Federated NDAE run: failed", "", f"- error: {error.splitlines()[0][:500] if error else ''}",
             f"- privacy: {'on' if config.privacy else 'off'}; survival mode `{config.effective_survival_mode}`", "",
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
    return path


def _site_reason(reason: str) -> str:
    """The site's own message from an error reply (Flower wraps it in the exception's repr)."""
    first = reason.strip().splitlines()[0] if reason.strip() else ""
    return first.replace("|", "\\|")[:300]


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
