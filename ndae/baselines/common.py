"""What the baselines share: the skip signal and the covariate frame the normative model reads."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ndae.errors import NdaeError

NORMATIVE_COLUMNS = ("subject", "site", "age", "sex")


class BaselineUnavailable(NdaeError):
    """The data cannot support this baseline (e.g. no label maps): the evaluation skips it."""


def covariate_frame(covariates: pd.DataFrame) -> pd.DataFrame:
    """`subject, site, age, sex` rows (what `NormativeModel` reads), index reset."""
    missing = [c for c in NORMATIVE_COLUMNS if c not in covariates.columns]
    if missing:
        raise NdaeError(f"baseline covariates are missing column(s) {missing}; have {list(covariates.columns)}")
    frame = covariates[list(NORMATIVE_COLUMNS)].reset_index(drop=True).copy()
    frame["subject"] = frame["subject"].astype(str)
    frame["site"] = frame["site"].astype(str)
    return frame


def control_mask(groups) -> np.ndarray:
    return np.asarray(pd.Series(groups).astype(str).str.lower() == "control")


def check_rows(name: str, n_rows: int, *arrays) -> None:
    for array in arrays:
        if len(array) != n_rows:
            raise NdaeError(f"{name}: {len(array)} rows given for {n_rows} subjects")


def check_controls(name: str, controls: np.ndarray, minimum: int) -> None:
    count = int(np.sum(controls))
    if count < minimum:
        raise BaselineUnavailable(f"{name} needs at least {minimum} controls, got {count}")
