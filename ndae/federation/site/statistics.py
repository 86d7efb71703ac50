"""Runs AT THE SITE: what the site computes on its rows for the server: z_sem, the controls'
summable sufficient statistics, the patients' deviation scores, Cox gradient/Hessian terms and the
risk summary (pair counts, Kaplan–Meier counts). Only aggregates leave, except the pooled scores
a site's policy allows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.federation.site.data import SiteData
from ndae.federation.site.training import build_dae

__all__ = ['encode_z_sem', 'covariates', 'normative_statistics', 'patient_survival_table', 'covariate_moments', 'cox_terms', 'concordance_counts', 'risk_summary', 'is_finite_number']

def encode_z_sem(site: SiteData, weights, dae_config: dict, rows: np.ndarray, device: str = "auto") -> np.ndarray:
    """z_sem (float64) of the selected subjects with the global EMA weights."""
    from ndae.federation.records import record_to_dae
    from ndae.model import encode
    from ndae.model.run import resolve_device

    model, ema = build_dae(dae_config, resolve_device(device))
    record_to_dae(weights, model, ema)
    d = model.config.model.z_sem_dim
    if not rows.any():
        return np.zeros((0, d))
    return encode(ema.model, site.data.images[rows]).numpy().astype(np.float64)


def covariates(site: SiteData, rows: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"subject": np.asarray(site.data.subjects)[rows].astype(str),
                         "site": np.asarray(site.data.sites)[rows].astype(str),
                         "age": np.asarray(site.data.ages, float)[rows],
                         "sex": np.asarray(site.data.sexes)[rows].astype(str)})


# ---- normative moments ------------------------------------------------------------------------
def normative_statistics(site: SiteData, weights, dae_config: dict, design: dict, device: str = "auto",
                         z_sem: np.ndarray | None = None) -> dict:
    """The controls' summable sufficient statistics of z_sem (no row leaves the site). `z_sem`:
    the controls' z_sem under `weights` when the caller has already encoded them."""
    from ndae.normative import DesignSpec, SufficientStats

    rows = site.controls
    if z_sem is None:
        z_sem = encode_z_sem(site, weights, dae_config, rows, device)
    stats = SufficientStats.from_data(covariates(site, rows), z_sem, DesignSpec.from_dict(design), site_column="site")
    return stats.to_arrays()


# ---- deviations and survival ------------------------------------------------------------------
def patient_survival_table(site: SiteData, weights, dae_config: dict, normative, features: list[str],
                           device: str = "auto", extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """The site's patients: subject, site, age, sex_female, time, event and their deviation scores
    (and the scores of `extra`, `subject` + columns: the prior residual z-scores)."""
    from ndae.deviation.scores import deviation_table
    from ndae.survival.analysis import patient_table

    rows = site.patients
    columns = ["subject", "site", "age", "sex_female", "time", "event", *features]
    if not rows.any():
        return pd.DataFrame({c: pd.Series(dtype=str if c in ("subject", "site") else float) for c in columns})
    z_sem = encode_z_sem(site, weights, dae_config, rows, device)
    table = deviation_table(covariates(site, rows)["subject"], covariates(site, rows), z_sem, normative)
    if extra is not None:
        table = table.merge(extra.assign(subject=extra["subject"].astype(str)), on="subject", how="left",
                            validate="one_to_one")
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise NdaeError(f"survival-features {missing} are not deviation scores; available: {list(table.columns[1:])}")
    scores = [c for c in table.columns if c != "subject"]  # every score travels (deviations.csv); Cox uses `features`
    survival, _ = patient_table(table, site.data.manifest, scores, source=str(site.manifest_path))
    bad = survival["time"].isna() | survival["event"].isna()
    if bad.any():
        raise NdaeError(f"{site.manifest_path}: patients without time/event: {survival.loc[bad, 'subject'].tolist()[:5]}")
    return survival[[*columns[:6], *scores]].reset_index(drop=True)


def covariate_moments(table: pd.DataFrame, covariate_names: list[str]) -> dict:
    from ndae.survival.federated_cox import site_covariate_moments

    return site_covariate_moments(table, covariate_names)


def cox_terms(table: pd.DataFrame, beta: np.ndarray, covariate_names: list[str]) -> dict:
    from ndae.survival.federated_cox import site_partial_likelihood_terms

    return site_partial_likelihood_terms(table, beta, covariate_names)


def concordance_counts(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    """Harrell's pair counts within the site, from scikit-survival (its convention: a pair is
    comparable when the earlier time is an event, a censoring at the same time counts as later;
    ties in risk count half). Summed over sites they give the within-site C-index."""
    from sksurv.metrics import concordance_index_censored

    time, risk = np.asarray(time, float), np.asarray(risk, float)
    event = np.asarray(event, float) > 0
    if not event.any():  # scikit-survival refuses a sample without events: no comparable pair
        return {"comparable": 0.0, "concordant": 0.0}
    _, concordant, discordant, tied_risk, _ = concordance_index_censored(event, time, risk)
    return {"comparable": float(concordant + discordant + tied_risk), "concordant": float(concordant + 0.5 * tied_risk)}


def risk_summary(table: pd.DataFrame, beta: np.ndarray, covariate_names: list[str],
                 reference: tuple[np.ndarray, list[str]] | None = None) -> dict[str, np.ndarray]:
    """Aggregates for the report, computed on the site's rows: concordance pair counts and the
    Kaplan–Meier counts (events / censored per month) by within-site tertile of x·beta.

    With a `reference` model (β, covariates; the covariates-only Cox model) also the paired
    concordance aggregates of both risks on the same pairs (`ndae.federation.paired_concordance`):
    `paired_sums` (3) and `paired_cross` (3 × 3), sums over patients, never a patient's own value."""
    from ndae.federation.paired_concordance import site_aggregates
    from ndae.survival.kaplan_meier import tertile_groups

    if len(table) == 0:
        empty = {"comparable": np.asarray(0.0), "concordant": np.asarray(0.0), "km": np.zeros((0, 4))}
        if reference is not None:
            empty.update(paired_sums=np.zeros(3), paired_cross=np.zeros((3, 3)))
        return empty
    risk = table[covariate_names].to_numpy(float) @ np.asarray(beta, float)
    counts = concordance_counts(table["time"], table["event"], risk)
    paired = {}
    if reference is not None:
        reference_beta, reference_covariates = reference
        reference_risk = table[reference_covariates].to_numpy(float) @ np.asarray(reference_beta, float)
        aggregates = site_aggregates(table["time"], table["event"], risk, reference_risk)
        paired = {"paired_sums": aggregates["sums"], "paired_cross": aggregates["cross"]}
    rows = []
    if len(table) >= 3:
        groups = tertile_groups(pd.Series(risk)).map({"low": 0, "middle": 1, "high": 2}).to_numpy()
        month = np.ceil(table["time"].to_numpy(float))  # whole months: no exact dates leave the site
        frame = pd.DataFrame({"group": groups, "month": month, "event": table["event"].to_numpy(float)})
        for (group, time, event), count in frame.groupby(["group", "month", "event"]).size().items():
            rows.append((group, time, event, count))
    return {"comparable": np.asarray(counts["comparable"]), "concordant": np.asarray(counts["concordant"]),
            "km": np.asarray(rows, dtype=np.float64).reshape(-1, 4), **paired}


def is_finite_number(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
