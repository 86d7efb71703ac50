"""The one sex coding of the project: `sex_female` = 1.0 for F, 0.0 for M.

The manifest stores M/F; tables read back from CSV may hold 0/1 (ints, floats or strings), and
people type "female"/"Male". Every model (normative design, covariates, survival) codes sex here,
so a female row means the same column value everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

_SEX_FEMALE = {"m": 0.0, "male": 0.0, "0": 0.0, "f": 1.0, "female": 1.0, "1": 1.0}


def _key(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return str(int(value))
    return str(value).strip().lower()


def sex_female(values: Any) -> np.ndarray:
    """1.0 (F) / 0.0 (M) per value; NaN where the value is missing or not a sex (callers name the
    rows in their own error)."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    return series.map(lambda v: _SEX_FEMALE.get(_key(v), np.nan)).to_numpy(dtype=np.float64)
