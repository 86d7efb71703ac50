"""Covariate design matrix for the normative model: intercept, age basis, sex.

Every site must build the *same* columns without seeing the other sites' data, so nothing here
is estimated from data: the age basis is fixed by a declared age range (default 18–90 y) and a
declared number of knots. A natural cubic spline (ESL eq. 5.4–5.5) is the default: smooth inside
the range and linear beyond its boundary knots, so a few subjects outside the range do not send
the fit to infinity. A polynomial basis (age scaled to [-1, 1] over the declared range) and a
plain linear basis are the alternatives.

Site is deliberately *not* a column here: the model handles site as a random intercept computed
from per-site sums in the sufficient statistics (see `ndae.normative.model`). One-hot site
columns would force every site to agree on the list of all sites in advance and would give a
site without controls no coefficient anyway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ndae.data.sex import sex_female
from ndae.errors import NdaeError

BASES = ("natural_spline", "polynomial", "linear")
@dataclass(frozen=True)
class DesignSpec:
    """What the design matrix is; identical at every site (it is part of the stats' payload)."""

    age_range: tuple[float, float] = (18.0, 90.0)
    basis: str = "natural_spline"
    n_knots: int = 4  # natural spline: knots equally spaced over age_range, boundaries included
    degree: int = 2  # polynomial only
    age_column: str = "age"
    sex_column: str = "sex"

    def __post_init__(self) -> None:
        low, high = (float(v) for v in self.age_range)
        object.__setattr__(self, "age_range", (low, high))
        if not high > low:
            raise NdaeError(f"design age_range must be increasing, got {self.age_range}")
        if self.basis not in BASES:
            raise NdaeError(f"design basis must be one of {BASES}, got {self.basis!r}")
        if self.basis == "natural_spline" and self.n_knots < 2:
            raise NdaeError(f"design n_knots must be >= 2, got {self.n_knots}")
        if self.basis == "polynomial" and self.degree < 1:
            raise NdaeError(f"design degree must be >= 1, got {self.degree}")

    # -- description -------------------------------------------------------------------------
    @property
    def knots(self) -> np.ndarray:
        """Natural-spline knots in years (empty for the other bases)."""
        if self.basis != "natural_spline":
            return np.empty(0)
        return np.linspace(self.age_range[0], self.age_range[1], self.n_knots)

    @property
    def age_columns(self) -> list[str]:
        if self.basis == "natural_spline":
            count = self.n_knots - 1
        elif self.basis == "polynomial":
            count = self.degree
        else:
            count = 1
        return [f"age_{k + 1}" for k in range(count)]

    @property
    def column_names(self) -> list[str]:
        return ["intercept", *self.age_columns, "sex_female"]

    @property
    def n_columns(self) -> int:
        return len(self.column_names)

    @property
    def continuous_columns(self) -> list[str]:
        """Covariates whose observed min/max the statistics record (for range warnings)."""
        return [self.age_column]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["age_range"] = list(self.age_range)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DesignSpec":
        data = dict(data)
        data["age_range"] = tuple(data["age_range"])
        return cls(**data)

    # -- building ----------------------------------------------------------------------------
    def build(self, covariates: pd.DataFrame) -> np.ndarray:
        """The (n, p) float64 design matrix; names missing/NaN/unknown values precisely."""
        age = self.age_values(covariates)
        sex = self.sex_values(covariates)
        return np.column_stack([np.ones(len(age)), self.age_basis(age), sex])

    def age_values(self, covariates: pd.DataFrame) -> np.ndarray:
        _require_columns(covariates, [self.age_column])
        raw = pd.to_numeric(covariates[self.age_column], errors="coerce")
        bad = raw.isna() | ~np.isfinite(raw.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            raise NdaeError(
                f"covariate column {self.age_column!r} has missing or non-numeric values in rows "
                f"{_row_labels(covariates, bad)}"
            )
        return raw.to_numpy(dtype=np.float64)

    def sex_values(self, covariates: pd.DataFrame) -> np.ndarray:
        _require_columns(covariates, [self.sex_column])
        column = covariates[self.sex_column]
        coded = sex_female(column)
        bad = pd.Series(np.isnan(coded), index=covariates.index)
        if bad.any():
            raise NdaeError(
                f"covariate column {self.sex_column!r} must be M/F (or 0/1); missing or unknown "
                f"values in rows {_row_labels(covariates, bad)}"
            )
        return coded

    def age_basis(self, age: np.ndarray) -> np.ndarray:
        """Age columns. Spline and polynomial columns are orthonormalised over a fixed grid of
        the declared range (not over data: every site gets the same transform), which keeps
        XᵀX well conditioned (≈ 30 instead of ≈ 3e4 for 4 knots) and so robust to DP noise."""
        age = np.asarray(age, dtype=np.float64)
        low, high = self.age_range
        if self.basis == "linear":
            return ((age - low) / (high - low))[:, None]
        return self._orthonormal(self._raw_age_basis(age))

    def _orthonormal(self, raw: np.ndarray) -> np.ndarray:
        grid = np.linspace(self.age_range[0], self.age_range[1], 201)
        G = np.column_stack([np.ones(len(grid)), self._raw_age_basis(grid)])
        # G = Q R with R = Lᵀ from the Cholesky factor of GᵀG: unique (positive diagonal)
        R = np.linalg.cholesky(G.T @ G / len(grid)).T
        full = np.column_stack([np.ones(len(raw)), raw]) @ np.linalg.inv(R)
        return full[:, 1:]

    def _raw_age_basis(self, age: np.ndarray) -> np.ndarray:
        low, high = self.age_range
        if self.basis == "polynomial":
            scaled = 2.0 * (age - low) / (high - low) - 1.0
            return np.column_stack([scaled**k for k in range(1, self.degree + 1)])
        # natural cubic spline on age scaled to [0, 1] (keeps the cubes of order 1)
        u = (age - low) / (high - low)
        knots = np.linspace(0.0, 1.0, self.n_knots)
        last = knots[-1]

        def d(k: int) -> np.ndarray:
            return (np.maximum(u - knots[k], 0.0) ** 3 - np.maximum(u - last, 0.0) ** 3) / (
                last - knots[k]
            )

        columns = [u]
        d_penultimate = d(self.n_knots - 2)
        for k in range(self.n_knots - 2):
            columns.append(d(k) - d_penultimate)
        return np.column_stack(columns)


def clip_row_norms(values: np.ndarray, max_norm: float | None) -> np.ndarray:
    """Scale every row of a (n, k) array to L2 norm ≤ max_norm (None: unchanged)."""
    values = np.asarray(values, dtype=np.float64)
    if max_norm is None:
        return values
    if max_norm <= 0:
        raise NdaeError(f"clip norm {max_norm} must be > 0")
    norms = np.linalg.norm(values, axis=1)
    return values * np.minimum(1.0, max_norm / np.maximum(norms, 1e-300))[:, None]


def clip_design_rows(X: np.ndarray, max_norm: float | None) -> np.ndarray:
    """Clip design rows to ‖x‖ ≤ max_norm keeping the intercept (column 0) at 1: only the
    covariate part is scaled, to norm ≤ √(max_norm² − 1). A clipped control then still counts
    as one record in n = XᵀX[0, 0] and Σy = XᵀY[0] (whole-row scaling would shrink both), and
    the per-record bound ‖x‖ ≤ max_norm the privacy accounting needs holds as before.
    None: unchanged (non-private models)."""
    X = np.asarray(X, dtype=np.float64)
    if max_norm is None:
        return X
    if not max_norm > 1.0:
        raise NdaeError(f"covariate clip {max_norm} must be > 1: the intercept alone has norm 1")
    if X.ndim != 2 or X.shape[1] < 1:
        raise NdaeError(f"expected a design matrix (records × columns), got shape {X.shape}")
    rest = clip_row_norms(X[:, 1:], float(np.sqrt(max_norm**2 - 1.0))) if X.shape[1] > 1 else X[:, 1:]
    return np.column_stack([X[:, :1], rest])



def _require_columns(frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise NdaeError(
            f"covariates are missing column(s) {missing}; columns present: {list(frame.columns)}"
        )


def _row_labels(frame: pd.DataFrame, bad: pd.Series, limit: int = 10) -> str:
    """Name offending rows by subject where the frame has one, else by index."""
    rows = frame.loc[bad.to_numpy()]
    labels = rows["subject"].astype(str).tolist() if "subject" in rows.columns else [
        str(i) for i in rows.index
    ]
    more = f" (+{len(labels) - limit} more)" if len(labels) > limit else ""
    return ", ".join(labels[:limit]) + more
