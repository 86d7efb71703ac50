"""Summable sufficient statistics of the controls: everything the normative model needs.

A site computes `SufficientStats.from_data` on its own controls and sends `to_arrays()` (the
Flower message payload); the server adds them (`a + b`, or `sum(...)`) and fits
`NormativeModel.from_stats`. The fitted model is then identical, up to float rounding, to a fit
on the pooled data: every quantity the model uses (coefficients, residual sum of squares,
site offsets, the controls' mean/sd used to standardise the latent, the residual covariance)
is a function of these sums.

Statistics (d features, p design columns, S sites):
- pooled: `n`, `xtx` (p×p), `xty` (p×d), `sum_y` (d), `sum_y2` (d), `yty` (d×d, optional:
  only the Mahalanobis score's residual correlation needs it; `sum_y2` is its diagonal).
- per site (for the site random intercept): `site_n` (S), `site_sum_x` (S×p), `site_sum_y` (S×d).
- `covariate_min/max`: observed range of the continuous covariates (age), for range warnings.

Differentially private releases (`ndae.privacy.dp_moments.private_moments`) send only the
MINIMAL set `xtx`, `xty` and `yty` (or `sum_y2`, its diagonal): because column 0 of the design is
the intercept, n = XᵀX[0, 0], ΣY = XᵀY[0] and ΣY² = diag(YᵀY), so releasing them again would only
add sensitivity. `from_arrays` derives the missing ones. Such a release also carries, as public
fields, the clip norms its rows were clipped to (`covariate_clip`, `latent_clip`: the normative
model applies the same clipping to everyone it scores) and the variance of the Gaussian noise per
coordinate of each block (`dp_noise_variance` = [XᵀX, XᵀY, YᵀY], summed over sites like the
statistics), which the server's post-processing uses. Non-private statistics have neither.

Every numeric array is plain float64 so that the privacy code can clip/noise it
(`STATISTIC_KEYS` are the sums over subjects; `map_statistics` applies a function to each).
Note: the controls' variance comes from ΣY² − nμ², which cancels when the latent's shared mean is
much larger than its spread (relative precision ≈ 1e-16·(mean/sd)²): fine for mean/sd ≲ 1e4.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.normative.design import DesignSpec

STATISTIC_KEYS = ("n", "xtx", "xty", "sum_y", "sum_y2", "yty", "site_n", "site_sum_x", "site_sum_y")
RANGE_KEYS = ("covariate_min", "covariate_max")
MINIMAL_KEYS = ("xtx", "xty", "yty")  # a DP release: everything else is derived (see from_arrays)
DERIVED_KEYS = ("n", "sum_y", "sum_y2")
PRIVACY_KEYS = ("covariate_clip", "latent_clip", "dp_noise_variance")  # public, DP releases only


@dataclass(frozen=True)
class SufficientStats:
    design: DesignSpec
    n: float
    xtx: np.ndarray
    xty: np.ndarray
    sum_y: np.ndarray
    sum_y2: np.ndarray
    yty: np.ndarray | None
    site_names: tuple[str, ...]
    site_n: np.ndarray
    site_sum_x: np.ndarray
    site_sum_y: np.ndarray
    covariate_min: np.ndarray
    covariate_max: np.ndarray
    covariate_clip: float | None = None  # DP release: ‖design row‖ ≤ this (intercept kept at 1)
    latent_clip: float | None = None  # DP release: ‖z_sem‖ ≤ this
    dp_noise_variance: np.ndarray | None = None  # per-coordinate noise variance of xtx, xty, yty

    @property
    def is_private(self) -> bool:
        return self.latent_clip is not None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_data(
        cls,
        covariates: pd.DataFrame,
        Y: np.ndarray,
        design: DesignSpec | None = None,
        site_column: str = "site",
        cross_products: bool = True,
    ) -> "SufficientStats":
        """Statistics of the rows given (the caller selects the controls).

        Without a `site_column` the rows count in the pooled sums only (no site offset).
        Zero rows are allowed: a site without controls contributes an empty statistic.
        """
        design = design or DesignSpec()
        Y = _as_matrix(Y, "Y")
        if len(covariates) != Y.shape[0]:
            raise NdaeError(
                f"covariates have {len(covariates)} rows but Y has {Y.shape[0]}: they must match"
            )
        if not np.all(np.isfinite(Y)):
            raise NdaeError("Y (the latent features) contains NaN or infinite values")
        X = design.build(covariates)
        d, p = Y.shape[1], X.shape[1]
        if site_column in covariates.columns:
            sites = covariates[site_column]
            if sites.isna().any():
                raise NdaeError(f"covariate column {site_column!r} has missing values")
            sites = sites.astype(str).to_numpy()
            names = tuple(sorted(set(sites)))
        else:
            sites, names = None, ()
        xtx, xty = X.T @ X, X.T @ Y
        if len(names) == 1:  # one site: its sums are the intercept rows (see to_arrays)
            site_n, site_sum_x, site_sum_y = np.array([float(len(X))]), xtx[None, 0], xty[None, 0]
        else:
            site_n = np.array([np.sum(sites == s) for s in names], dtype=np.float64)
            site_sum_x = np.array([X[sites == s].sum(0) for s in names]).reshape(len(names), p)
            site_sum_y = np.array([Y[sites == s].sum(0) for s in names]).reshape(len(names), d)
        ages = design.age_values(covariates)
        if len(ages):
            low, high = np.array([ages.min()]), np.array([ages.max()])
        else:
            low, high = np.full(1, np.inf), np.full(1, -np.inf)
        return cls(
            design=design,
            n=float(X.shape[0]),
            xtx=xtx,
            xty=xty,
            sum_y=Y.sum(0),
            sum_y2=(Y**2).sum(0),
            yty=Y.T @ Y if cross_products else None,
            site_names=names,
            site_n=site_n,
            site_sum_x=site_sum_x.astype(np.float64),
            site_sum_y=site_sum_y.astype(np.float64),
            covariate_min=low.astype(np.float64),
            covariate_max=high.astype(np.float64),
        )

    # -- shape ------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.sum_y.shape[0])

    @property
    def n_columns(self) -> int:
        return int(self.xtx.shape[0])

    # -- combination ------------------------------------------------------------------------
    def __add__(self, other: "SufficientStats") -> "SufficientStats":
        if not isinstance(other, SufficientStats):
            return NotImplemented
        if self.design != other.design:
            raise NdaeError(
                "cannot add sufficient statistics built with different designs: "
                f"{self.design.to_dict()} vs {other.design.to_dict()}"
            )
        if self.n_features != other.n_features:
            raise NdaeError(
                f"cannot add sufficient statistics with {self.n_features} and "
                f"{other.n_features} features"
            )
        names = tuple(sorted(set(self.site_names) | set(other.site_names)))
        if (self.covariate_clip, self.latent_clip) != (other.covariate_clip, other.latent_clip):
            raise NdaeError(
                "cannot add sufficient statistics clipped differently: (covariate, latent) clips "
                f"{(self.covariate_clip, self.latent_clip)} vs {(other.covariate_clip, other.latent_clip)}"
            )
        noise = [s.dp_noise_variance for s in (self, other) if s.dp_noise_variance is not None]

        def merged(attribute: str) -> np.ndarray:
            width = getattr(self, attribute).shape[1:]
            out = np.zeros((len(names), *width))
            for stats in (self, other):
                for row, name in enumerate(stats.site_names):
                    out[names.index(name)] += getattr(stats, attribute)[row]
            return out

        yty = None if self.yty is None or other.yty is None else self.yty + other.yty
        return SufficientStats(
            design=self.design,
            n=self.n + other.n,
            xtx=self.xtx + other.xtx,
            xty=self.xty + other.xty,
            sum_y=self.sum_y + other.sum_y,
            sum_y2=self.sum_y2 + other.sum_y2,
            yty=yty,
            site_names=names,
            site_n=merged("site_n"),
            site_sum_x=merged("site_sum_x"),
            site_sum_y=merged("site_sum_y"),
            covariate_min=np.minimum(self.covariate_min, other.covariate_min),
            covariate_max=np.maximum(self.covariate_max, other.covariate_max),
            covariate_clip=self.covariate_clip,
            latent_clip=self.latent_clip,
            dp_noise_variance=sum(noise) if noise else None,
        )

    def __radd__(self, other: object) -> "SufficientStats":
        if other == 0:  # lets sum([...]) work
            return self
        return NotImplemented

    def map_statistics(self, function: Callable[[str, np.ndarray], np.ndarray]) -> "SufficientStats":
        """Apply `function(key, array) -> array` to every sum over subjects (privacy hook)."""
        arrays = self.to_arrays()
        for key in STATISTIC_KEYS:
            if key in arrays:
                arrays[key] = np.asarray(function(key, arrays[key]), dtype=np.float64)
        return SufficientStats.from_arrays(arrays)

    # -- payload ----------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Dict of numpy arrays (the Flower payload). Numeric ones are float64;
        `site_names` is a str array and `design` a 0-d str array holding JSON.

        A one-site statistic (what a site sends) omits `site_n/site_sum_x/site_sum_y`: they are
        its `n` and the intercept rows of `xtx`/`xty`, so they cost no extra privacy and stay
        consistent with those after noise; `from_arrays` rebuilds them."""
        arrays = {
            "n": np.asarray(self.n, dtype=np.float64),
            "xtx": self.xtx,
            "xty": self.xty,
            "sum_y": self.sum_y,
            "sum_y2": self.sum_y2,
            "site_n": self.site_n,
            "site_sum_x": self.site_sum_x,
            "site_sum_y": self.site_sum_y,
            "covariate_min": self.covariate_min,
            "covariate_max": self.covariate_max,
            "site_names": np.array(self.site_names, dtype=np.str_).reshape(len(self.site_names)),
            "design": np.array(json.dumps(self.design.to_dict(), sort_keys=True)),
        }
        if self.yty is not None:
            arrays["yty"] = self.yty
        if self.covariate_clip is not None:
            arrays["covariate_clip"] = np.asarray(self.covariate_clip, dtype=np.float64)
        if self.latent_clip is not None:
            arrays["latent_clip"] = np.asarray(self.latent_clip, dtype=np.float64)
        if self.dp_noise_variance is not None:
            arrays["dp_noise_variance"] = np.asarray(self.dp_noise_variance, dtype=np.float64)
        if len(self.site_names) == 1:
            for key in ("site_n", "site_sum_x", "site_sum_y"):
                del arrays[key]
        return {k: (v.astype(np.float64) if v.dtype.kind in "fiub" else v) for k, v in arrays.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "SufficientStats":
        """From `to_arrays()` or from a minimal DP release (`xtx`, `xty`, `yty` or `sum_y2`):
        n, ΣY and ΣY² missing from the payload are read off XᵀX[0, 0], XᵀY[0] and diag(YᵀY)."""
        arrays = dict(arrays)
        if "xtx" in arrays and "n" not in arrays:
            arrays["n"] = np.asarray(np.asarray(arrays["xtx"], dtype=np.float64)[0, 0])
        if "xty" in arrays and "sum_y" not in arrays:
            arrays["sum_y"] = np.asarray(arrays["xty"], dtype=np.float64)[0].copy()
        if "yty" in arrays and "sum_y2" not in arrays:
            arrays["sum_y2"] = np.diag(np.asarray(arrays["yty"], dtype=np.float64)).copy()
        names = tuple(str(s) for s in np.asarray(arrays.get("site_names", [])).reshape(-1))
        derived = ("site_n", "site_sum_x", "site_sum_y") if len(names) == 1 else ()
        required = [
            k for k in (*STATISTIC_KEYS, *RANGE_KEYS, "site_names", "design")
            if k != "yty" and k not in derived
        ]
        missing = [k for k in required if k not in arrays]
        if missing:
            raise NdaeError(f"sufficient statistics payload is missing {missing}")
        design = DesignSpec.from_dict(json.loads(str(np.asarray(arrays["design"]))))
        f = {k: np.asarray(arrays[k], dtype=np.float64) for k in (*STATISTIC_KEYS, *RANGE_KEYS) if k in arrays}
        p = design.n_columns
        d = f["sum_y"].shape[0] if f["sum_y"].ndim == 1 else -1
        S = len(names)
        if derived and not all(k in arrays for k in derived):
            if f["xtx"].shape != (p, p) or f["xty"].shape != (p, d):
                raise NdaeError("sufficient statistics 'xtx'/'xty' have the wrong shape")
            f["site_n"], f["site_sum_x"], f["site_sum_y"] = f["n"].reshape(1), f["xtx"][None, 0], f["xty"][None, 0]
        expected = {
            "n": (),
            "xtx": (p, p),
            "xty": (p, d),
            "sum_y": (d,),
            "sum_y2": (d,),
            "yty": (d, d),
            "site_n": (S,),
            "site_sum_x": (S, p),
            "site_sum_y": (S, d),
        }
        for key, shape in expected.items():
            if key in f and f[key].shape != shape:
                raise NdaeError(
                    f"sufficient statistics array {key!r} has shape {f[key].shape}, expected {shape}"
                )
        return cls(
            design=design,
            n=float(f["n"]),
            xtx=f["xtx"],
            xty=f["xty"],
            sum_y=f["sum_y"],
            sum_y2=f["sum_y2"],
            yty=f.get("yty"),
            site_names=names,
            site_n=f["site_n"],
            site_sum_x=f["site_sum_x"],
            site_sum_y=f["site_sum_y"],
            covariate_min=f["covariate_min"],
            covariate_max=f["covariate_max"],
            covariate_clip=_optional_scalar(arrays, "covariate_clip"),
            latent_clip=_optional_scalar(arrays, "latent_clip"),
            dp_noise_variance=(
                np.asarray(arrays["dp_noise_variance"], dtype=np.float64).reshape(3).copy()
                if "dp_noise_variance" in arrays else None
            ),
        )


def _optional_scalar(arrays: Mapping[str, np.ndarray], key: str) -> float | None:
    if key not in arrays:
        return None
    value = float(np.asarray(arrays[key], dtype=np.float64).reshape(()))
    if not (np.isfinite(value) and value > 0):
        raise NdaeError(f"sufficient statistics {key!r} must be a positive number, got {value}")
    return value


def _as_matrix(Y: np.ndarray, name: str) -> np.ndarray:
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise NdaeError(f"{name} must be a (subjects × features) matrix, got shape {Y.shape}")
    return Y
