"""The C-index `ndae survival` reports must not be the in-sample C of noise."""

import numpy as np
import pandas as pd
import pytest

from ndae.survival.metrics import harrell_c_index
from ndae.survival.validated_c import refit_bootstrap_c
from tests.survival_simulation import simulate_weibull_cox


def _noise_table(seed: int, n: int = 60, k: int = 10):
    rng = np.random.default_rng(seed)
    weibull = simulate_weibull_cox(n, [0.0], seed=seed)  # survival unrelated to anything
    table = pd.DataFrame(rng.normal(size=(n, k)), columns=[f"x{i}" for i in range(k)])
    table["time"], table["event"] = weibull["time"].to_numpy(), weibull["event"].to_numpy()
    return table, [f"x{i}" for i in range(k)]


def _fixed_risk_bootstrap_lower(time, event, risk, n_boot: int, seed: int, alpha: float = 0.05) -> float:
    """Lower percentile bound of Harrell's C over row resamples with the fitted risk held fixed:
    the interval the report gave before the refit bootstrap, which never sees the optimism."""
    time, event, risk = (np.asarray(a, float) for a in (time, event, risk))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(time), len(time))
        if event[rows].sum() > 0:
            values.append(harrell_c_index(time[rows], event[rows], risk[rows]))
    return float(np.quantile(values, alpha / 2))


def test_ten_noise_covariates_are_not_reported_as_signal():
    table, covariates = _noise_table(3)
    result = refit_bootstrap_c(table, covariates, n_boot=60, seed=0)
    # Fitted to its own rows, a Cox on 10 noise covariates looks good ...
    assert result["apparent"] > 0.6
    # ... which a bootstrap of the fixed risk (the old report) takes at face value:
    from ndae.survival.cox import CoxModel

    risk = CoxModel().fit(table, covariates).predict_log_partial_hazard(table)
    assert _fixed_risk_bootstrap_lower(table["time"], table["event"], risk, n_boot=200, seed=0) > 0.5
    # Refitting on each resample removes the optimism and the interval covers chance.
    assert result["corrected"] < result["apparent"] - 0.05
    assert abs(result["corrected"] - 0.5) < 0.08
    assert result["lower"] < 0.5 < result["upper"]


def test_a_real_effect_survives_validation():
    weibull = simulate_weibull_cox(150, [1.0], seed=5)
    table = weibull[["x0", "time", "event"]]
    result = refit_bootstrap_c(table, ["x0"], n_boot=60, seed=0)
    assert result["lower"] > 0.55
    assert abs(result["corrected"] - result["apparent"]) < 0.02  # one covariate, 150 rows: little optimism



def test_a_resample_without_a_comparable_pair_is_dropped_not_averaged():
    """Resamples of a tiny table often hold no comparable pair: their optimism is undefined. They
    are dropped like the unfittable ones (the refit by CoxModel.fit used to raise lifelines'
    ZeroDivisionError 'No admissable pairs' out of the whole validation)."""
    table = pd.DataFrame({"x": [0.1, 0.5, 1.5, 0.3, 0.8, 1.2, 0.0], "time": [2., 6, 6, 1, 3, 3, 0.5],
                          "event": [0, 1, 1, 0, 1, 1, 1], "site": ["A"] * 3 + ["B"] * 4})
    result = refit_bootstrap_c(table, ["x"], strata=["site"], n_boot=50, seed=1)
    assert np.isfinite(result["corrected"]) and np.isfinite(result["optimism"])
    assert 0 < result["n_boot"] < 50


def test_only_a_refit_lifelines_cannot_converge_is_dropped_other_errors_propagate(monkeypatch):
    import ndae.survival.validated_c as validated_c

    table = pd.DataFrame({"x": np.linspace(0, 1, 12), "time": np.arange(1.0, 13.0), "event": [1, 0] * 6})

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("a refit that fails for another reason")

    monkeypatch.setattr(validated_c, "coefficients", broken)
    with pytest.raises(np.linalg.LinAlgError, match="another reason"):
        refit_bootstrap_c(table, ["x"], n_boot=5, seed=0)
