"""A Cox refit of the refit bootstrap: `CoxModel.fit` against `ndae.survival.refit.coefficients`.

Both on the same bootstrap resamples of an 18-patient, 3-site table (the shared test cohort's
size), stratified by site, in one run; the ratio is what matters (`benchmarks/RESULTS.md`). The
coefficients are checked equal on every resample as they are timed.

    python -m benchmarks.bench_refit
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd


def resamples(n_tables: int = 4, per_table: int = 25, n: int = 18) -> list[pd.DataFrame]:
    out = []
    for seed in range(n_tables):
        rng = np.random.default_rng(seed)
        score = rng.normal(size=n)
        table = pd.DataFrame({"mahalanobis": score, "age": rng.normal(60, 10, n).round(1),
                              "sex_female": rng.integers(0, 2, n),
                              "time": np.round(rng.exponential(20 * np.exp(-0.8 * score))) + 1,
                              "event": (rng.random(n) < 0.7).astype(int), "site": np.repeat(["site1", "site2", "site3"], n // 3)})
        for _ in range(per_table):
            sample = table.iloc[rng.integers(0, n, n)].reset_index(drop=True)
            if sample["event"].sum() > 0 and all(sample[c].nunique() > 1 for c in ("mahalanobis", "age", "sex_female")):
                out.append(sample)
    return out


def main() -> None:
    from lifelines.exceptions import ConvergenceError

    from ndae.errors import NdaeError
    from ndae.survival.cox import CoxModel
    from ndae.survival.refit import coefficients

    covariates = ["mahalanobis", "age", "sex_female"]
    samples = resamples()
    timings = {"CoxModel.fit": 0.0, "refit.coefficients": 0.0}
    fitted = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for repeat in range(2):  # the first pass warms imports and caches; the second is timed
            for sample in samples:
                started = time.process_time()
                try:
                    model = CoxModel(strata=["site"]).fit(sample, "time", "event", covariates=covariates)
                except NdaeError:
                    model = None
                middle = time.process_time()
                try:
                    beta, _ = coefficients(sample, "time", "event", covariates, strata=["site"])
                except ConvergenceError:
                    beta = None
                ended = time.process_time()
                assert (model is None) == (beta is None)
                assert beta is None or np.array_equal(beta, model.params_.to_numpy())
                if repeat:
                    timings["CoxModel.fit"] += middle - started
                    timings["refit.coefficients"] += ended - middle
                    fitted += 1
    old, new = (1000 * timings[k] / fitted for k in ("CoxModel.fit", "refit.coefficients"))
    print(f"{fitted} resamples (18 rows, 3 strata, 3 covariates), CPU per refit: CoxModel.fit {old:.1f} ms, "
          f"refit.coefficients {new:.1f} ms: {old / new:.2f}x; coefficients equal on every resample")


if __name__ == "__main__":
    main()
