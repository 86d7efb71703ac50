"""Pooled Cox proportional-hazards model: a thin, validated wrapper over lifelines' CoxPHFitter.

Fits deviation scores + covariates on a table with `time` (months) and `event` (0/1), optionally
stratified (e.g. `strata=["site"]`: one baseline hazard per site, shared coefficients).
Saved as `cox.json` (coefficients, variance, centring means: enough to predict) and
`hazard_ratios.csv` (the tidy table a person reads).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ndae.errors import NdaeError
from ndae.io import atomic_write_json, atomic_write_text
from ndae.survival._validation import validate_survival_frame

MODEL_FILE = "cox.json"
HAZARD_RATIO_FILE = "hazard_ratios.csv"


def hazard_ratio_table(coef: pd.Series, se: pd.Series, alpha: float = 0.05) -> pd.DataFrame:
    """Tidy table: one row per covariate with HR = exp(coef) and its Wald (1 - alpha) CI."""
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


def _stratum_key(key) -> str:
    """One JSON key per stratum, the same for lifelines' column labels and a row's values."""
    if isinstance(key, tuple):
        return str(key[0]) if len(key) == 1 else str([str(k) for k in key])
    return str(key)


class CoxModel:
    """Cox model with lifelines-like `fit` / `predict_*`, plus `save` / `load`.

    penalizer: lifelines' L2 penalty (on standardised covariates); 0 gives the plain MLE.
    """

    def __init__(
        self,
        penalizer: float = 0.0,
        strata: Sequence[str] | None = None,
        duration_col: str = "time",
        event_col: str = "event",
        alpha: float = 0.05,
    ):
        if penalizer < 0:
            raise NdaeError(f"Cox penalizer must be >= 0, got {penalizer}")
        self.penalizer = float(penalizer)
        self.strata = list(strata) if strata else None
        self.duration_col, self.event_col, self.alpha = duration_col, event_col, alpha
        self.fitter_ = None

    def fit(self, df: pd.DataFrame, covariates: Sequence[str]) -> "CoxModel":
        from lifelines import CoxPHFitter
        from lifelines.exceptions import ConvergenceError

        covariates = list(covariates)
        validate_survival_frame(df, covariates, self.duration_col, self.event_col, self.strata, where="Cox fit")
        for column in covariates:
            if df[column].nunique() < 2:
                raise NdaeError(f"Cox fit: covariate column {column!r} is constant; drop it")
        columns = [*covariates, self.duration_col, self.event_col, *(self.strata or [])]
        table = df[columns].copy()
        table[self.event_col] = table[self.event_col].astype(int)
        fitter = CoxPHFitter(penalizer=self.penalizer, alpha=self.alpha)
        try:
            fitter.fit(table, duration_col=self.duration_col, event_col=self.event_col, strata=self.strata)
        except ConvergenceError as error:
            raise NdaeError(f"Cox fit did not converge for covariates {covariates}: {error}") from error
        self.fitter_ = fitter
        self.covariates = covariates
        self.params_ = fitter.params_.rename("coef")
        self.standard_errors_ = fitter.standard_errors_.rename("se")
        self.variance_matrix_ = fitter.variance_matrix_
        self.means_ = fitter._norm_mean.rename("mean")
        self.log_likelihood_ = float(fitter.log_likelihood_)
        self.concordance_index_ = float(fitter.concordance_index_)
        self.n_, self.events_ = int(len(table)), int(table[self.event_col].sum())
        return self

    # -- results -----------------------------------------------------------------------------
    def hazard_ratios(self) -> pd.DataFrame:
        self._check_fitted()
        return hazard_ratio_table(self.params_, self.standard_errors_, self.alpha)

    def predict_log_partial_hazard(self, df: pd.DataFrame) -> np.ndarray:
        """(x - training mean)·beta; higher = higher risk. Works after `load` too."""
        self._check_fitted()
        missing = [c for c in self.covariates if c not in df.columns]
        if missing:
            raise NdaeError(f"Cox predict: missing column(s) {missing}")
        x = df[self.covariates].to_numpy(dtype=float) - self.means_.to_numpy()
        return x @ self.params_.to_numpy()

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
        atomic_write_text(directory / HAZARD_RATIO_FILE, self.hazard_ratios().to_csv(index=False))

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
        model = cls(data.get("penalizer", 0.0), data.get("strata"), data.get("duration_col", "time"), data.get("event_col", "event"), data.get("alpha", 0.05))
        covariates = list(data["covariates"])
        model.covariates = covariates
        model.params_ = pd.Series([data["coef"][c] for c in covariates], index=covariates, name="coef")
        model.standard_errors_ = pd.Series([data["se"][c] for c in covariates], index=covariates, name="se")
        model.means_ = pd.Series([data["means"][c] for c in covariates], index=covariates, name="mean")
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
