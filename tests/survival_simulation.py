"""Small survival simulations with a known truth, for tests and for checking the fitters.

Weibull proportional hazards: h(t | x) = h0(t) exp(x·beta) with h0(t) = (k / s) (t / s)^(k-1),
so T = s * (E / exp(x·beta))^(1/k) with E ~ Exp(1); independent uniform censoring.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def simulate_weibull_cox(
    n: int,
    beta: Sequence[float],
    seed: int = 0,
    shape: float = 1.5,
    scale: float = 24.0,
    censor_max: float = 60.0,
    sites: Sequence[str] | None = None,
    site_scale: Sequence[float] | None = None,
    round_to_months: bool = False,
) -> pd.DataFrame:
    """Rows with covariates x0.., `true_risk` = x·beta, `time` (months), `event`, `site`.

    `site_scale` multiplies each site's baseline time scale (different baseline hazards);
    `round_to_months` rounds times up to whole months, creating ties.
    """
    rng = np.random.default_rng(seed)
    beta = np.asarray(beta, dtype=float)
    x = rng.normal(size=(n, len(beta)))
    true_risk = x @ beta
    site = np.asarray(sites)[rng.integers(0, len(sites), n)] if sites is not None else np.full(n, "site_0")
    multiplier = np.ones(n)
    if sites is not None and site_scale is not None:
        multiplier = np.array([dict(zip(sites, site_scale))[s] for s in site])
    event_time = scale * multiplier * (rng.exponential(size=n) / np.exp(true_risk)) ** (1 / shape)
    censor_time = rng.uniform(0, censor_max, n)
    time = np.minimum(event_time, censor_time)
    if round_to_months:
        time = np.ceil(time)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(len(beta))])
    frame["true_risk"] = true_risk
    frame["time"] = time
    frame["event"] = (event_time <= censor_time).astype(int)
    frame["site"] = site
    return frame
