"""Weibull proportional-hazards survival for simulated ALS patients, with censoring and C*.

Hazard h(t | η) = (k / b) (t / b)^(k-1) exp(η), η the true linear predictor
    η = β_s (s − 0.5) / 0.2 + β_age (age − 60) / 10 + β_bulbar [bulbar onset],
so exp(β) are hazard ratios per severity SD, per decade of age and for bulbar onset.
Event times by inversion (Bender, Augustin & Blettner 2005): T = b (−log U · e^(−η))^(1/k).
Censoring: administrative (staggered entry over an accrual period, fixed study end) and random
loss to follow-up (exponential). See docs/cohort.md for the numbers and their sources.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np
import pandas as pd

from ndae.errors import NdaeError


class SurvivalModelError(NdaeError):
    """A cohort.json without a usable survival model, or truth rows it cannot redraw."""


@dataclass(frozen=True)
class SurvivalModel:
    weibull_shape: float = 1.5  # k > 1: hazard rises with time since scan
    median_months: float = 30.0  # median survival from scan of the reference patient (η = 0)
    log_hazard_ratio_severity: float = float(np.log(2.0))  # per SD (0.2) of severity
    severity_reference: float = 0.5
    severity_sd: float = 0.2
    log_hazard_ratio_age: float = float(np.log(1.4))  # per decade
    age_reference: float = 60.0
    log_hazard_ratio_bulbar: float = float(np.log(1.5))
    accrual_months: float = 24.0  # scans spread uniformly over the first 24 months ...
    study_months: float = 72.0  # ... of a study that closes at 72 months
    dropout_months: float = 150.0  # mean time to loss to follow-up

    @classmethod
    def from_dict(cls, values: Mapping, where: str = "survival_model") -> "SurvivalModel":
        """The model as cohort.json stores it (`asdict`); every field must be there, a number."""
        if not isinstance(values, Mapping):
            raise SurvivalModelError(f"{where}: expected an object with the survival model's parameters")
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in values]
        unknown = sorted(set(values) - set(names))
        if missing or unknown:
            raise SurvivalModelError(f"{where}: missing {missing}, unknown {unknown} (fields: {names})")
        parsed = {}
        for name in names:
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise SurvivalModelError(f"{where}.{name}: expected a finite number, got {value!r}")
            parsed[name] = float(value)
        for name in ("weibull_shape", "median_months", "severity_sd", "study_months", "dropout_months"):
            if parsed[name] <= 0:
                raise SurvivalModelError(f"{where}.{name}: must be positive, got {parsed[name]}")
        return cls(**parsed)

    @property
    def weibull_scale(self) -> float:
        return self.median_months / np.log(2) ** (1 / self.weibull_shape)

    def linear_predictor(self, severity, age, bulbar) -> np.ndarray:
        severity, age, bulbar = (np.asarray(x, dtype=float) for x in (severity, age, bulbar))
        return (
            self.log_hazard_ratio_severity * (severity - self.severity_reference) / self.severity_sd
            + self.log_hazard_ratio_age * (age - self.age_reference) / 10
            + self.log_hazard_ratio_bulbar * bulbar
        )

    def survival_function(self, months, risk) -> np.ndarray:
        """S(t | η) = exp(−(t / b)^k e^η)."""
        return np.exp(-((np.asarray(months) / self.weibull_scale) ** self.weibull_shape) * np.exp(risk))

    def simulate(self, risk, rng: np.random.Generator) -> pd.DataFrame:
        """True event and censoring times and the observed (time, event) for each risk η."""
        risk = np.asarray(risk, dtype=float)
        n = len(risk)
        uniform = rng.uniform(size=n)
        event_time = self.weibull_scale * (-np.log(uniform) * np.exp(-risk)) ** (1 / self.weibull_shape)
        entry = rng.uniform(0, self.accrual_months, size=n)
        administrative = self.study_months - entry
        dropout = rng.exponential(self.dropout_months, size=n)
        censor_time = np.minimum(administrative, dropout)
        event = (event_time <= censor_time).astype(int)
        return pd.DataFrame(
            {
                "risk": risk,
                "event_time": event_time,
                "censor_time": censor_time,
                "time": np.minimum(event_time, censor_time),
                "event": event,
            }
        )


def redraw_survival(cohort_json: Mapping, truth: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fresh (time, event) for the given patients from exactly the model the cohort used.

    `cohort_json`: the cohort's cohort.json (its `survival_model`); `truth`: patients' rows of
    its truth.csv, each with its true linear predictor `risk` (severity, age and onset enter
    only through it). New event times, study entries and losses to follow-up are drawn from
    `rng`; the order of the rows is the order of the draws, so the patients of copy c of a
    cohort, in source order, with `seeds.survival_stream(seed, c)` give the cohort's own times.
    """
    if not isinstance(cohort_json, Mapping) or "survival_model" not in cohort_json:
        raise SurvivalModelError("cohort.json has no 'survival_model': it cannot redraw survival")
    model = SurvivalModel.from_dict(cohort_json["survival_model"], "cohort.json survival_model")
    if "risk" not in truth.columns:
        raise SurvivalModelError("truth: no 'risk' column (the true linear predictor)")
    risk = pd.to_numeric(truth["risk"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(risk)
    if bad.any():
        names = truth["subject"].astype(str).to_numpy()[bad] if "subject" in truth.columns else np.flatnonzero(bad)
        raise SurvivalModelError(f"truth: no finite 'risk' for {list(names[:5])} (pass the patients' rows only)")
    drawn = model.simulate(risk, rng)
    return drawn["time"].to_numpy(), drawn["event"].to_numpy()


def simulate_patients(
    n: int, rng: np.random.Generator, model: SurvivalModel = SurvivalModel(), bulbar_fraction: float = 0.3
) -> pd.DataFrame:
    """A survival table without images: ALS-like ages (N(62, 11) in 30–85), severity Beta(2.5, 2.5)."""
    age = np.clip(rng.normal(62, 11, size=n), 30, 85)
    severity = rng.beta(2.5, 2.5, size=n)
    bulbar = (rng.uniform(size=n) < bulbar_fraction).astype(int)
    table = model.simulate(model.linear_predictor(severity, age, bulbar), rng)
    table.insert(0, "bulbar", bulbar)
    table.insert(0, "severity", severity)
    table.insert(0, "age", age)
    return table


def concordance_index(time, score, event) -> float:
    """Harrell's C of a risk score (higher = fails sooner); NaN when no pair is comparable."""
    from ndae.survival.metrics import harrell_c_index

    return harrell_c_index(time, event, score)


def kaplan_meier_median(time, event) -> float:
    """Median of the Kaplan–Meier estimate, from lifelines (inf if survival never drops to 0.5)."""
    from lifelines import KaplanMeierFitter

    fitter = KaplanMeierFitter().fit(np.asarray(time, dtype=float), np.asarray(event, dtype=int))
    return float(fitter.median_survival_time_)


def survival_summary(table: pd.DataFrame) -> dict:
    """C* (true η on the observed, censored data and on the true event times), censoring, KM median."""
    return {
        "n_patients": int(len(table)),
        "oracle_c_index": concordance_index(table["time"], table["risk"], table["event"]),
        "oracle_c_index_uncensored": concordance_index(table["event_time"], table["risk"], np.ones(len(table))),
        "censoring_fraction": float(1 - table["event"].mean()) if len(table) else float("nan"),
        "kaplan_meier_median_months": kaplan_meier_median(table["time"], table["event"]),
        "median_true_event_time_months": float(np.median(table["event_time"])) if len(table) else float("nan"),
    }
