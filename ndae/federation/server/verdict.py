"""The federated report's verdict: what the run found, each clause chosen by the run's numbers.

Read before any table: whether the imaging adds to the covariates (with its CI), the NDAE against
the voxel-wise baseline, whether z_sem carries age better than the mean age does, whether DP
noise swamps a site's statistics (noised beside true control counts) and each site's epsilon
spent and left of its lifetime budget. A private run whose noise swamps a site says up front that
its statistics are not interpretable at this size; a run whose Cox likelihood is monotone says that
no finite Cox model exists, in the fitter's words.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["age_probe_clause", "budget_clause", "dp_noise_clause", "swamped_sites", "verdict_lines",
           "voxelwise_clause"]


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)


def _first_estimate(block: dict | None, name: str | None = None) -> dict | None:
    """The out-of-sample estimate where the run made one, else the in-sample within-site one."""
    for kind in ("cross_validated", "within_site"):
        entry = (block or {}).get(kind)
        if name is not None and isinstance(entry, dict):
            entry = entry.get(name)
        if isinstance(entry, dict) and "not_computed" not in entry:
            return entry
    return None


def voxelwise_clause(survival: dict, info: dict | None = None) -> str:
    """NDAE against the voxel-wise normative baseline on the same pairs, read from the CI."""
    result = survival.get("voxelwise")
    if not result:
        why = (info or {}).get("not_computed", "not run")
        return f"NDAE vs the voxel-wise baseline: not computed ({why})."
    if "not_computed" in result:
        return f"NDAE vs the voxel-wise baseline: not computed ({result['not_computed']})."
    e = _first_estimate(result, "ndae_vs_voxelwise")
    if e is None or not _finite(e.get("difference"), e.get("lower"), e.get("upper")):
        return "NDAE vs the voxel-wise baseline: no CI could be computed."
    interval = f"{e['difference']:+.3f} in C (95% CI {e['lower']:+.3f} to {e['upper']:+.3f}, {e['kind']})"
    if e["lower"] > 0:
        return f"The NDAE model ranks patients better than the voxel-wise baseline: {interval}."
    if e["upper"] < 0:
        return f"The voxel-wise baseline ranks patients better than the NDAE model: {interval}."
    return f"The NDAE model and the voxel-wise baseline are not distinguishable: {interval}, the CI includes 0."


# Below a 10 % smaller error than the mean age's, z_sem "carries little age"; the trained and the
# initial encoder count as the same when their RMSEs differ by less than the 0.1 y the report shows.
AGE_GAIN = 0.10
SAME_RMSE_Y = 0.1


def age_probe_clause(probe: dict | None) -> str:
    """Does z_sem predict age better than the mean age does? A higher r alone is no gain when the
    RMSE is no better than the mean's; the initial encoder is the yardstick for what training added."""
    trained = (probe or {}).get("trained") or {}
    if not _finite(trained.get("rmse"), trained.get("mean_rmse")):
        why = trained.get("not_computed", "not computed")
        return f"Age in z_sem: not measured ({why})."
    rmse, mean = trained["rmse"], trained["mean_rmse"]
    init = (probe or {}).get("init") or {}
    if rmse >= mean:
        both = (" (nor does the initial encoder's, RMSE {:.1f} y)".format(init["rmse"])
                if _finite(init.get("rmse")) and init["rmse"] >= mean else "")
        change = (f"; the r of {trained['r']:+.3f} against {init['r']:+.3f} at the initial weights is no gain"
                  if _finite(trained.get("r"), init.get("r")) else "")
        return (f"z_sem does not carry age: predicted from it on held-out sites, age is off by RMSE {rmse:.1f} y, "
                f"no better than the mean age does ({mean:.1f} y){both}{change}.")
    gain = 1.0 - rmse / mean if mean > 0 else 0.0
    how = "carries age" if gain >= AGE_GAIN else "carries little age"
    sentence = (f"z_sem {how}: RMSE {rmse:.1f} y on held-out sites against {mean:.1f} y for the mean age "
                f"({100 * gain:.0f} % smaller)")
    if _finite(init.get("rmse")):
        if init["rmse"] - rmse < SAME_RMSE_Y:
            return sentence + f", but the untrained encoder does as well (RMSE {init['rmse']:.1f} y): training added none."
        return sentence + f", better than the initial encoder's {init['rmse']:.1f} y."
    return sentence + "."


def swamped_sites(summary: dict) -> list[str]:
    """The sites named by the normative (and prior-residual) noise warnings, in the sites' order."""
    lines = list((summary.get("normative") or {}).get("warnings") or [])
    lines += list((summary.get("prior_residuals") or {}).get("warnings") or [])
    return [site for site in summary.get("sites", {}) if any(f"site {site!r}" in line for line in lines)]


def _noisy_counts(metrics: Iterable[dict]) -> dict[str, float]:
    for entry in metrics:
        if entry.get("phase") == "normative" and isinstance(entry.get("controls_by_site"), dict):
            return entry["controls_by_site"]
    return {}


def dp_noise_clause(summary: dict, metrics: Iterable[dict]) -> str:
    """Whether the DP noise swamps a site, with each site's noised control count beside its true one."""
    sites = list(summary.get("sites", {}))
    swamped = swamped_sites(summary)
    noisy = _noisy_counts(metrics)
    counts, withheld = [], 0
    for site in sites:
        true = (summary["sites"][site] or {}).get("controls")
        shown = f"{site} {noisy[site]:.0f}" if _finite(noisy.get(site)) else f"{site} –"
        if isinstance(true, (int, float)) and true >= 0:
            shown += f" (true {true:.0f})"
        else:
            withheld += 1
        counts.append(shown)
    counted = f" Noised control counts: {', '.join(counts)}" if counts else ""
    if counts:
        counted += ("; the sites withheld their true counts." if withheld == len(counts) else
                    f"; {withheld} site(s) withheld the true count." if withheld else ".")
    total = (summary.get("normative") or {}).get("n_controls")
    if not swamped:
        return f"DP noise: no site's statistics are swamped by it.{counted}"
    model = f"; the normative model's {total:.0f} controls are a noised count" if _finite(total) else ""
    return (f"DP noise swamps the statistics of {len(swamped)} of {len(sites)} sites ({', '.join(swamped)}){model}."
            f"{counted}")


def budget_clause(heads: dict | None, target_epsilon: float = 0.0) -> str:
    """Each site's epsilon spent (its ledger, composed over every release) and left of its lifetime budget."""
    parts = []
    short = []
    for site, head in sorted((heads or {}).items()):
        spent, budget = head.get("epsilon"), head.get("budget_epsilon")
        if not _finite(spent):
            parts.append(f"{site} spent an unbounded epsilon")
            continue
        if not _finite(budget):
            parts.append(f"{site} {spent:.2f} (no lifetime budget)")
            continue
        left = budget - spent
        parts.append(f"{site} {spent:.2f} of {budget:g} ({max(left, 0.0):.2f} left)")
        if target_epsilon > 0 and left < target_epsilon:
            short.append(site)
    if not parts:
        return ""
    sentence = "Epsilon spent of each site's lifetime budget: " + "; ".join(parts) + "."
    if short:
        sentence += (f" {', '.join(short)} cannot afford another run at epsilon {target_epsilon:g}.")
    return sentence


def verdict_lines(summary: dict, metrics: Iterable[dict] = (), private: bool = False,
                  target_epsilon: float = 0.0) -> list[str]:
    """The report's first lines. The first keeps its form `**Verdict (estimate).** ...` (what the
    imaging adds), opened by a plain warning where a private run's noise swamps a site."""
    from ndae.federation.server.report import added_value_reading, swap_reading

    metrics = list(metrics)
    survival = summary["survival"]
    added = survival.get("added_value") or {}
    e = _first_estimate(added)
    warning = ""
    swamped = swamped_sites(summary) if private else []
    if swamped:
        warning = (f"Not interpretable at this size: the DP noise swamps {len(swamped)} of "
                   f"{len(summary.get('sites', {}))} sites' statistics, so the scores and C-indices below are "
                   "mostly noise (more controls per site, fewer sites or a larger epsilon are needed). ")
    if survival.get("cox_refused"):
        first = (f"**Verdict.** {warning}No finite Cox model could be fitted, so nothing is said of what the imaging "
                 f"adds: {survival['cox_refused']}")
    elif e is not None:
        first = f"**Verdict ({e['kind']}).** {warning}Imaging over the covariates: " + added_value_reading(
            e, ", ".join(added["features"]), ", ".join(added["covariates"]) or "none")
    elif added.get("not_computed"):
        first = (f"**Verdict.** {warning}What the imaging adds to the covariates was not computed: "
                 f"{added['not_computed']}.")
    else:
        first = f"**Verdict.** {warning}What the imaging adds to the covariates was not computed."
    lines = [first]
    swap = survival.get("prior_swap") or {}
    if "relative_change" in swap:
        lines.append("z_sem use: " + swap_reading(swap["relative_change"]))
    lines.append("- " + voxelwise_clause(survival, summary.get("voxelwise")))
    lines.append("- " + age_probe_clause(summary.get("latent_probe")))
    if private:
        lines.append("- " + dp_noise_clause(summary, metrics))
        budget = budget_clause(summary.get("privacy"), target_epsilon)
        if budget:
            lines.append("- " + budget)
    return lines + [""]


def verdict_console(lines: list[str]) -> list[str]:
    """The verdict as console lines (markdown emphasis dropped)."""
    return [line.replace("**", "").removeprefix("- ") for line in lines if line.strip()]
