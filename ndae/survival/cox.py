"""Pooled Cox proportional-hazards model: a thin, validated wrapper over lifelines' CoxPHFitter.

Fits deviation scores + covariates on a table with `time` (months) and `event` (0/1), optionally
stratified (e.g. `strata=["site"]`: one baseline hazard per site, shared coefficients).
Saved as `cox.json` (coefficients, variance, centring means: enough to predict) and
`hazard_ratios.csv` (the tidy table a person reads, `hazard_ratio_table`).

It speaks lifelines' API, as `FederatedCoxFitter` does: `fit(df, duration_col, event_col)` and
`summary`, `params_`, `standard_errors_`, `hazard_ratios_`, `confidence_intervals_` with
lifelines' names and values (`CoxResults`). The spellings before it (`fit(df, covariates)`,
duration and event columns given to the constructor, `hazard_ratios()`) still work for one
release and raise a DeprecationWarning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.io import atomic_write_json, atomic_write_text
from ndae.survival._validation import validate_survival_frame

MODEL_FILE = "cox.json"
HAZARD_RATIO_FILE = "hazard_ratios.csv"


def hazard_ratio_table(coef: pd.Series, se: pd.Series, alpha: float = 0.05) -> pd.DataFrame:
    """Tidy table: one row per covariate with HR = exp(coef) and its Wald (1 - alpha) CI."""
    from scipy import stats  # here, not at the top: a site's Cox-query process never needs it

    z_critical = stats.norm.ppf(1 - alpha / 2)
    z = coef / se
    return pd.DataFrame(
        {
            "covariate": list(coef.index),
            "coef": coef.to_numpy(),
            "se": se.to_numpy(),
            "hazard_ratio": np.exp(coef.to_numpy()),
            "hazard_ratio_lower_95": np.exp((coef - z_critical * se).to_numpy()),
            "hazard_ratio_upper_95": np.exp((coef + z_critical * se).to_numpy()),
            "z": z.to_numpy(),
            "p": 2 * stats.norm.sf(np.abs(z.to_numpy())),
        }
    )


class CoxResults:
    """lifelines' result attributes from `params_`, `standard_errors_` and `alpha`, computed as
    CoxPHFitter computes them (Wald intervals, chi-square p-values), with its column names."""

    @property
    def hazard_ratios_(self) -> pd.Series:
        return pd.Series(np.exp(self.params_), index=self.params_.index, name="exp(coef)")

    @property
    def confidence_intervals_(self) -> pd.DataFrame:
        level, z = _level(self.alpha)
        coef, se = self.params_.to_numpy(), self.standard_errors_.to_numpy()
        return pd.DataFrame(np.c_[coef - z * se, coef + z * se], index=self.params_.index,
                            columns=[f"{level:g}% lower-bound", f"{level:g}% upper-bound"])

    @property
    def summary(self) -> pd.DataFrame:
        """lifelines' `summary`: one row per covariate, columns coef, exp(coef), se(coef), the
        (1 − alpha) intervals of both, cmp to, z, p, -log2(p)."""
        from scipy import stats

        level, z = _level(self.alpha)
        intervals = self.confidence_intervals_
        with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
            table = pd.DataFrame(index=self.params_.index)
            table["coef"] = self.params_
            table["exp(coef)"] = self.hazard_ratios_
            table["se(coef)"] = self.standard_errors_
            table[f"coef lower {level:g}%"] = intervals[f"{level:g}% lower-bound"]
            table[f"coef upper {level:g}%"] = intervals[f"{level:g}% upper-bound"]
            table[f"exp(coef) lower {level:g}%"] = self.hazard_ratios_ * np.exp(-z * self.standard_errors_)
            table[f"exp(coef) upper {level:g}%"] = self.hazard_ratios_ * np.exp(z * self.standard_errors_)
            table["cmp to"] = np.zeros_like(self.params_)
            table["z"] = self.params_ / self.standard_errors_
            table["p"] = stats.chi2.sf(table["z"] ** 2, 1)
            table["-log2(p)"] = -np.log2(table["p"])
        return table


def _level(alpha: float) -> tuple[float, float]:
    from scipy import stats

    return 100 * (1 - alpha), float(stats.norm.ppf(1 - alpha / 2))


def lifelines_fit_arguments(duration_col, event_col, covariates, where: str):
    """(duration_col, event_col, covariates) of a `fit` call, the spelling before lifelines' too:
    `fit(df, covariates[, duration_col, event_col])`, which warns."""
    if duration_col is None or isinstance(duration_col, str):
        return duration_col, event_col, covariates
    warnings.warn(f"{where}.fit(df, covariates) is deprecated: use fit(df, duration_col, event_col, "
                  "covariates=...) as lifelines does", DeprecationWarning, stacklevel=3)
    return event_col, covariates, list(duration_col)  # the old order: covariates, duration, event


def lifelines_table(df: pd.DataFrame, covariates: Sequence[str], duration_col: str, event_col: str,
                    strata: Sequence[str] | None = None) -> pd.DataFrame:
    """The columns a lifelines Cox fit is given (covariates, duration, event, strata), the event as
    int: every fit here builds its input this way, so that refits equal the fits they stand for."""
    table = df[[*covariates, duration_col, event_col, *(strata or [])]].copy()
    table[event_col] = table[event_col].astype(int)
    return table


def log_partial_hazard(df: pd.DataFrame, covariates: Sequence[str], beta: np.ndarray, means: np.ndarray) -> np.ndarray:
    """(x − training mean)·β of the rows of `df`; higher = higher risk."""
    return (df[list(covariates)].to_numpy(dtype=float) - means) @ beta


def _covariate_index(names: Sequence[str]) -> pd.Index:
    return pd.Index(list(names), name="covariate")  # as lifelines names it


def _stratum_key(key) -> str:
    """One JSON key per stratum, the same for lifelines' column labels and a row's values."""
    if isinstance(key, tuple):
        return str(key[0]) if len(key) == 1 else str([str(k) for k in key])
    return str(key)


class CoxModel(CoxResults):
    """Cox model with lifelines' `fit` / `summary` / `predict_*`, plus `save` / `load`.

    penalizer: lifelines' L2 penalty (on standardised covariates); 0 gives the plain MLE.
    duration_col, event_col: deprecated here (give them to `fit`, as lifelines takes them).
    """

    def __init__(
        self,
        penalizer: float = 0.0,
        strata: Sequence[str] | None = None,
        duration_col: str | None = None,
        event_col: str | None = None,
        alpha: float = 0.05,
    ):
        if penalizer < 0:
            raise NdaeError(f"Cox penalizer must be >= 0, got {penalizer}")
        if duration_col is not None or event_col is not None:
            warnings.warn("CoxModel(duration_col=..., event_col=...) is deprecated: give them to fit(df, "
                          "duration_col, event_col) as lifelines does", DeprecationWarning, stacklevel=2)
        self.penalizer = float(penalizer)
        self.strata = list(strata) if strata else None
        self.duration_col, self.event_col, self.alpha = duration_col or "time", event_col or "event", alpha
        self.fitter_ = None

    def fit(self, df: pd.DataFrame, duration_col: str | None = None, event_col: str | None = None,
            covariates: Sequence[str] | None = None) -> "CoxModel":
        """lifelines' `fit`: `covariates` default to every column but the duration, event and
        strata ones."""
        from lifelines import CoxPHFitter
        from lifelines.exceptions import ConvergenceError

        duration_col, event_col, covariates = lifelines_fit_arguments(duration_col, event_col, covariates,
                                                                      "CoxModel")
        duration_col, event_col = duration_col or self.duration_col, event_col or self.event_col
        if covariates is None:
            covariates = [c for c in df.columns if c not in (duration_col, event_col, *(self.strata or []))]
        covariates = list(covariates)
        validate_survival_frame(df, covariates, duration_col, event_col, self.strata, where="Cox fit")
        for column in covariates:
            if df[column].nunique() < 2:
                raise NdaeError(f"Cox fit: covariate column {column!r} is constant; drop it")
        table = lifelines_table(df, covariates, duration_col, event_col, self.strata)
        fitter = CoxPHFitter(penalizer=self.penalizer, alpha=self.alpha)
        try:
            fitter.fit(table, duration_col=duration_col, event_col=event_col, strata=self.strata)
        except ConvergenceError as error:
            raise NdaeError(f"Cox fit did not converge for covariates {covariates}: {error}") from error
        self.fitter_ = fitter
        self.duration_col, self.event_col = duration_col, event_col
        self.covariates = covariates
        self.params_ = fitter.params_.rename("coef")
        self.standard_errors_ = fitter.standard_errors_.rename("se")
        self.variance_matrix_ = fitter.variance_matrix_
        self.means_ = fitter._norm_mean.rename("mean")
        self.log_likelihood_ = float(fitter.log_likelihood_)
        self.concordance_index_ = float(fitter.concordance_index_)
        self.n_, self.events_ = int(len(table)), int(table[event_col].sum())
        return self

    # -- results -----------------------------------------------------------------------------
    def hazard_ratios(self) -> pd.DataFrame:
        """Deprecated: `summary` (lifelines' table), or `hazard_ratio_table` for this old one."""
        warnings.warn("CoxModel.hazard_ratios() is deprecated: use .summary (lifelines' table) or "
                      "hazard_ratio_table(model.params_, model.standard_errors_)", DeprecationWarning, stacklevel=2)
        self._check_fitted()
        return hazard_ratio_table(self.params_, self.standard_errors_, self.alpha)

    def predict_log_partial_hazard(self, df: pd.DataFrame) -> np.ndarray:
        """(x - training mean)·beta; higher = higher risk. Works after `load` too."""
        self._check_fitted()
        missing = [c for c in self.covariates if c not in df.columns]
        if missing:
            raise NdaeError(f"Cox predict: missing column(s) {missing}")
        return log_partial_hazard(df, self.covariates, self.params_.to_numpy(), self.means_.to_numpy())

    def predict_survival_function(self, df: pd.DataFrame, times: Sequence[float]) -> np.ndarray:
        """S(t | x) for each row (n × len(times)); after `load` from the saved baseline hazard."""
        if self.fitter_ is None:
            return self._survival_from_saved_baseline(df, times)
        columns = [*self.covariates, *(self.strata or [])]
        if self.strata:
            # lifelines has one baseline hazard per training stratum and none for a new one.
            known = set(self.fitter_.baseline_cumulative_hazard_.columns)
            for key in df[self.strata].itertuples(index=False, name=None):
                key_value = key[0] if len(key) == 1 else key
                if key_value not in known:
                    raise NdaeError(f"Cox predict_survival_function: stratum {key_value!r} ({self.strata}) was not in the training data")
        rows = df[columns].reset_index(drop=True)
        survival = self.fitter_.predict_survival_function(rows, times=np.asarray(times, dtype=float))
        # With strata lifelines returns the columns grouped by stratum: put them back in row order.
        return survival[rows.index].to_numpy().T

    def _survival_from_saved_baseline(self, df: pd.DataFrame, times: Sequence[float]) -> np.ndarray:
        """S(t | x) = exp(−H0_stratum(t) · exp((x − mean)·β)), H0 interpolated linearly between
        event times exactly as lifelines does, so a loaded model predicts what the fitted one did."""
        baseline = getattr(self, "baseline_", None)
        if not baseline:
            raise NdaeError("Cox predict_survival_function: this saved model has no baseline hazard "
                            "(saved by an older version, or fitted by the federated Newton-Raphson); refit it")
        times = np.asarray(times, dtype=float)
        risk = np.exp(self.predict_log_partial_hazard(df))
        keys = [None] * len(df) if not self.strata else [
            _stratum_key(key) for key in df[self.strata].itertuples(index=False, name=None)]
        out = np.empty((len(df), times.size))
        for row, key in enumerate(keys):
            if key not in baseline["cumulative_hazard"]:
                raise NdaeError(f"Cox predict_survival_function: stratum {key!r} ({self.strata}) was not in the training data")
            cumulative = np.interp(times, baseline["times"], baseline["cumulative_hazard"][key])
            out[row] = np.exp(-cumulative * risk[row])
        return out

    def _baseline_for_saving(self) -> dict | None:
        if self.fitter_ is None:
            return getattr(self, "baseline_", None)
        hazard = self.fitter_.baseline_cumulative_hazard_
        if self.strata:
            columns = {_stratum_key(key): hazard[key] for key in hazard.columns}
        else:
            columns = {None: hazard.iloc[:, 0]}
        return {"times": hazard.index.to_numpy(float).tolist(),
                "cumulative_hazard": {key: value.to_numpy(float).tolist() for key, value in columns.items()}}

    # -- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write `cox.json` and `hazard_ratios.csv` into `directory` (atomically)."""
        self._check_fitted()
        directory = Path(directory)
        atomic_write_json(
            directory / MODEL_FILE,
            {
                "model": "cox_proportional_hazards",
                "ties": "efron",
                "covariates": self.covariates,
                "coef": dict(zip(self.covariates, self.params_.tolist())),
                "se": dict(zip(self.covariates, self.standard_errors_.tolist())),
                "variance_matrix": self.variance_matrix_.to_numpy().tolist(),
                "means": dict(zip(self.covariates, self.means_.tolist())),
                "penalizer": self.penalizer,
                "strata": self.strata,
                "duration_col": self.duration_col,
                "event_col": self.event_col,
                "alpha": self.alpha,
                "n": self.n_,
                "events": self.events_,
                "log_likelihood": self.log_likelihood_,
                "concordance_index_train": self.concordance_index_,
                # lifelines' baseline cumulative hazard at the covariate means, per stratum
                # (key "null" without strata): what predict_survival_function needs after load.
                "baseline": self._baseline_for_saving(),
            },
        )
        atomic_write_text(directory / HAZARD_RATIO_FILE,
                          hazard_ratio_table(self.params_, self.standard_errors_, self.alpha).to_csv(index=False))

    @classmethod
    def load(cls, directory: str | Path) -> "CoxModel":
        path = Path(directory) / MODEL_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise NdaeError(f"{path}: no saved Cox model here") from error
        except json.JSONDecodeError as error:
            raise NdaeError(f"{path}: not valid JSON ({error})") from error
        for key in ("covariates", "coef", "se", "means"):
            if key not in data:
                raise NdaeError(f"{path}: missing field {key!r}")
        model = cls(data.get("penalizer", 0.0), data.get("strata"), alpha=data.get("alpha", 0.05))
        model.duration_col, model.event_col = data.get("duration_col", "time"), data.get("event_col", "event")
        covariates = list(data["covariates"])
        model.covariates = covariates
        index = _covariate_index(covariates)
        model.params_ = pd.Series([data["coef"][c] for c in covariates], index=index, name="coef")
        model.standard_errors_ = pd.Series([data["se"][c] for c in covariates], index=index, name="se")
        model.means_ = pd.Series([data["means"][c] for c in covariates], index=index, name="mean")
        model.variance_matrix_ = pd.DataFrame(data.get("variance_matrix"), index=covariates, columns=covariates)
        model.n_, model.events_ = data.get("n"), data.get("events")
        model.log_likelihood_ = data.get("log_likelihood")
        model.concordance_index_ = data.get("concordance_index_train")
        baseline = data.get("baseline")
        if baseline:
            model.baseline_ = {"times": np.asarray(baseline["times"], float),
                               "cumulative_hazard": {None if key == "null" else key: np.asarray(values, float)
                                                     for key, values in baseline["cumulative_hazard"].items()}}
        return model

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise NdaeError("Cox model is not fitted: call fit() or CoxModel.load()")
