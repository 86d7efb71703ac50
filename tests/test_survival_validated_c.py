"""The C-index `ndae survival` reports must not be the in-sample C of noise (issue 15.6)."""

import numpy as np
import pandas as pd

from ndae.survival.metrics import harrell_c_index_ci
from ndae.survival.simulate import simulate_weibull_cox
from ndae.survival.validated_c import refit_bootstrap_c


def _noise_table(seed: int, n: int = 60, k: int = 10):
    rng = np.random.default_rng(seed)
    weibull = simulate_weibull_cox(n, [0.0], seed=seed)  # survival unrelated to anything
    table = pd.DataFrame(rng.normal(size=(n, k)), columns=[f"x{i}" for i in range(k)])
    table["time"], table["event"] = weibull["time"].to_numpy(), weibull["event"].to_numpy()
    return table, [f"x{i}" for i in range(k)]


def test_ten_noise_covariates_are_not_reported_as_signal():
    table, covariates = _noise_table(3)
    result = refit_bootstrap_c(table, covariates, n_boot=60, seed=0)
    # Fitted to its own rows, a Cox on 10 noise covariates looks good ...
    assert result["apparent"] > 0.6
    # ... which a bootstrap of the fixed risk (the old report) takes at face value:
    from ndae.survival.cox import CoxModel

    risk = CoxModel().fit(table, covariates).predict_log_partial_hazard(table)
    assert harrell_c_index_ci(table["time"], table["event"], risk, n_boot=200, seed=0)["lower"] > 0.5
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
