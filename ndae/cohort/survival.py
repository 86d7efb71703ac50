"""Weibull proportional-hazards survival for simulated ALS patients, with censoring and C*.

Hazard h(t | η) = (k / b) (t / b)^(k-1) exp(η), η the true linear predictor
    η = β_s (s − 0.5) / 0.2 + β_age (age − 60) / 10 + β_bulbar [bulbar onset],
so exp(β) are hazard ratios per severity SD, per decade of age and for bulbar onset.
Event times by inversion (Bender, Augustin & Blettner 2005): T = b (−log U · e^(−η))^(1/k).
Censoring: administrative (staggered entry over an accrual period, fixed study end) and random
loss to follow-up (exponential). See docs/cohort.md for the numbers and their sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


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
    """Harrell's C, exactly: over pairs where the earlier time is an event, the fraction whose
    higher score (risk) fails first; tied scores count one half. O(n²) in blocks."""
    time, score, event = (np.asarray(x, dtype=float) for x in (time, score, event))
    concordant, comparable = 0.0, 0.0
    for start in range(0, len(time), 1024):
        t_i, s_i, e_i = time[start : start + 1024, None], score[start : start + 1024, None], event[start : start + 1024, None]
        usable = (t_i < time[None, :]) & (e_i == 1)
        comparable += usable.sum()
        concordant += (usable & (s_i > score[None, :])).sum() + 0.5 * (usable & (s_i == score[None, :])).sum()
    return float(concordant / comparable) if comparable else float("nan")


def kaplan_meier_median(time, event) -> float:
    """Median of the Kaplan–Meier estimate (inf if survival never drops to 0.5)."""
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    order = np.lexsort((-event, time))  # events before censorings at tied times
    time, event = time[order], event[order]
    at_risk = len(time) - np.arange(len(time))
    survival = np.cumprod(1 - event / at_risk)
    below = np.nonzero(survival <= 0.5)[0]
    return float(time[below[0]]) if len(below) else float("inf")


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
