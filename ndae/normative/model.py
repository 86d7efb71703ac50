"""The normative model of the controls' latent: z_sem ~ age basis + sex + site, per feature.

Model (per feature f, computed entirely from `SufficientStats`, so a federated fit equals the
pooled fit):

- The latent is first standardised with the healthy controls' mean and sd (from ΣY, ΣY², n):
  the raw z_sem sits on a large shared mean, and both the weak prior below and the cosine score
  (`ndae.deviation.scores`) only make sense on the standardised scale.
- y = xᵀβ + u_site + ε,  ε ~ N(0, σ²),  u_site ~ N(0, τ²)  (a random site intercept),
  β ~ N(0, σ²/λ · I) with a weak ridge λ (`prior_precision`, default 1e-3).
- σ², τ² and β are estimated by EM on the random-intercept model: β is the GLS estimate, which
  for a site with n_s controls only needs that site's n_s, Σx and Σy; the site offset is the
  BLUP u_s = ρ_s · mean residual_s with shrinkage ρ_s = n_s τ² / (σ² + n_s τ²) toward 0, and
  its posterior variance ρ_s σ² / n_s. A fixed number of EM steps (no tolerance-dependent
  stopping) keeps the federated and pooled fits equal to float rounding.
  On synthetic data τ² agrees with statsmodels' ML `MixedLM` to < 1 % and σ² differs only by
  the N/(N − p) degrees-of-freedom factor (tests/test_normative_model.py).
- Site effects need at least two sites with controls; otherwise τ² = 0 and the model is a plain
  Bayesian ridge regression.

Prediction: for a site with controls, mean xᵀβ + u_s and variance
σ² + σ² x̃ᵀA⁻¹x̃ + ρ_s σ²/n_s with x̃ = x − ρ_s x̄_s (A: the GLS precision incl. the prior; x̄_s:
the site's mean design row; this accounts for u_s being estimated from the same β). For a site
*without* controls (or no site column) the pooled mean xᵀβ with variance σ² + σ² xᵀA⁻¹x + τ²:
the predictive distribution of a new, unseen site.

Clipping (differentially private fits only): a model fitted on DP statistics knows the clip norms
its controls were clipped to (`covariate_clip`, `latent_clip`, from the statistics). Everyone it
scores is clipped the same way before anything is computed (`design_matrix`, `clip_latent`, used
by `predict*`, `standardise`, `z_scores`, `transfer`): design rows to ‖x‖ ≤ covariate_clip with
the intercept kept at 1, z_sem rows to ‖z‖ ≤ latent_clip. A controls-only clip would compare
shrunk controls with unshrunk patients. Non-private models (no clip) are unchanged.
`transfer` gives a new site its own shrunken offset from a few of its controls
without refitting β, σ², τ² (as PCNtoolkit's transfer does).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from copy import deepcopy
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.io import atomic_write_bytes, atomic_write_json
from ndae.normative.design import DesignSpec, clip_design_rows, clip_row_norms
from ndae.normative.sufficient_stats import SufficientStats

MODEL_VERSION = 1
_VARIANCE_FLOOR = 1e-10  # on the standardised scale, where the controls' variance is 1


class OutOfRangeWarning(UserWarning):
    """A prediction for covariates outside the range the model was fitted on."""


class NormativeModel:
    """Bayesian linear normative model with random site intercepts; `fit` / `predict`."""

    def __init__(
        self,
        design: DesignSpec | None = None,
        prior_precision: float = 1e-3,
        site_effects: bool = True,
        n_iterations: int = 200,
        site_column: str = "site",
    ) -> None:
        self.design = design or DesignSpec()
        self.prior_precision = float(prior_precision)
        self.site_effects = bool(site_effects)
        self.n_iterations = int(n_iterations)
        self.site_column = site_column
        self.feature_names: list[str] | None = None
        self.covariate_clip: float | None = None
        self.latent_clip: float | None = None
        self._fitted = False

    # -- fitting ----------------------------------------------------------------------------
    def fit(
        self, covariates: pd.DataFrame, Y: np.ndarray, feature_names: list[str] | None = None
    ) -> "NormativeModel":
        """Fit on the controls given (rows of `covariates`, a `site` column is optional)."""
        stats = SufficientStats.from_data(covariates, Y, self.design, site_column=self.site_column)
        return self.fit_stats(stats, feature_names)

    @classmethod
    def from_stats(
        cls, stats: SufficientStats, feature_names: list[str] | None = None, **options
    ) -> "NormativeModel":
        return cls(design=stats.design, **options).fit_stats(stats, feature_names)

    def fit_stats(
        self, stats: SufficientStats, feature_names: list[str] | None = None
    ) -> "NormativeModel":
        self.design = stats.design
        d, p = stats.n_features, stats.n_columns
        N = stats.n
        if N - p < 1:
            raise NdaeError(
                f"the normative model needs more controls than design columns: "
                f"{N:g} controls, {p} columns ({self.design.column_names})"
            )
        self.feature_names = _feature_names(feature_names, d)

        # standardise with the controls' mean and sd, all from the sums
        mean = stats.sum_y / N
        variance = (stats.sum_y2 - N * mean**2) / (N - 1)
        sd = np.sqrt(np.maximum(variance, _VARIANCE_FLOOR * np.maximum(mean**2, 1.0)))
        sum_x = stats.xtx[:, 0]  # intercept column: Σx
        xtx = stats.xtx
        xty = (stats.xty - np.outer(sum_x, mean)) / sd  # (p, d)
        syy = (stats.sum_y2 - 2 * mean * stats.sum_y + N * mean**2) / sd**2  # (d,)

        use = stats.site_n > 0
        site_n = stats.site_n[use]
        site_x = stats.site_sum_x[use]
        site_y = (stats.site_sum_y[use] - site_n[:, None] * mean) / sd  # (S, d)
        n_sites = int(use.sum())
        penalty = self.prior_precision * np.eye(p)
        # DP statistics: the Gaussian noise on XᵀY inflates the explained sum of squares by
        # E[bᵀA⁻¹b] = σ²_noise·tr(A⁻¹) over the non-intercept coordinates (the centred
        # intercept row is exactly 0); add it back so the residual variance is not driven to 0.
        noise_xty = 0.0 if stats.dp_noise_variance is None else float(stats.dp_noise_variance[1])

        def solve(rho: np.ndarray):
            weight = rho / site_n[:, None]  # (S, d)
            A = xtx[None] + penalty - np.einsum("sf,sp,sq->fpq", weight, site_x, site_x)
            b = xty.T - np.einsum("sf,sp,sf->fp", weight, site_x, site_y)
            beta = np.linalg.solve(A, b[..., None])[..., 0]  # (d, p)
            residual_sum = site_y - site_x @ beta.T  # (S, d)
            offset = rho * residual_sum / site_n[:, None]
            rss = (
                syy
                - 2 * np.sum(beta * xty.T, 1)
                + np.einsum("fp,pq,fq->f", beta, xtx, beta)
                - 2 * np.sum(offset * residual_sum, 0)
                + np.sum(site_n[:, None] * offset**2, 0)
            )
            if noise_xty > 0:
                inverse = np.linalg.inv(A)[:, 1:, 1:]
                rss = rss + noise_xty / sd**2 * np.trace(inverse, axis1=1, axis2=2)
            return A, beta, residual_sum, offset, rss

        rho = np.zeros((n_sites, d))
        A, beta, residual_sum, offset, rss = solve(rho)
        sigma2 = np.maximum(rss / (N - p), _VARIANCE_FLOOR)
        tau2 = np.zeros(d)
        # DP statistics: each site's Σy carries Gaussian noise (variance per coordinate: the
        # summed XᵀY noise variance over the sites that sent it), so a site's mean residual is
        # u_s + ε̄_s + noise_s; its variance κ_s = noise/n_s² (standardised) joins σ²/n_s in the
        # shrinkage ρ_s = τ² / (τ² + σ²/n_s + κ_s) and the offset's posterior variance.
        kappa = np.zeros((n_sites, d))
        if noise_xty > 0 and n_sites:
            kappa = noise_xty / max(len(stats.site_names), 1) / site_n[:, None] ** 2 / sd**2

        def shrinkage(sigma2, tau2):
            return tau2 / (tau2 + sigma2 / site_n[:, None] + kappa)

        if self.site_effects and n_sites >= 2:
            site_mean = residual_sum / site_n[:, None]
            tau2 = np.maximum(
                np.mean(site_mean**2 - sigma2 / site_n[:, None] - kappa, 0), 0.05 * sigma2
            )
            for _ in range(self.n_iterations):  # EM; fixed count (see module docstring)
                rho = shrinkage(sigma2, tau2)
                A, beta, residual_sum, offset, rss = solve(rho)
                offset_variance = rho * (sigma2 / site_n[:, None] + kappa)
                sigma2 = np.maximum(
                    (rss + np.sum(site_n[:, None] * rho * sigma2 / site_n[:, None], 0)) / (N - p),
                    _VARIANCE_FLOOR,
                )
                tau2 = np.mean(offset**2 + offset_variance, 0)
            rho = shrinkage(sigma2, tau2)
            A, beta, residual_sum, offset, rss = solve(rho)
        offset_variance = rho * (sigma2 / site_n[:, None] + kappa)

        self.control_mean = mean
        self.control_sd = sd
        self.beta = beta  # (d, p), standardised scale
        self.beta_precision = A  # (d, p, p); posterior covariance = σ² A⁻¹
        self.noise_variance = sigma2  # (d,), standardised scale
        self.site_variance = tau2
        self.site_names = [name for name, keep in zip(stats.site_names, use) if keep]
        self.site_n = site_n
        self.site_offset = offset  # (S, d), standardised scale
        self.site_offset_variance = offset_variance  # Var(u_s | β)
        self.site_shrinkage = rho  # (S, d): ρ_s
        self.site_mean_x = site_x / site_n[:, None]  # (S, p): the site's mean design row
        self.n_controls = N
        self.covariate_min = stats.covariate_min.copy()
        self.covariate_max = stats.covariate_max.copy()
        self.covariate_clip = stats.covariate_clip
        self.latent_clip = stats.latent_clip
        self.residual_covariance = None  # (d, d) standardised; for Mahalanobis scores
        if stats.yty is not None:
            yty = (
                stats.yty
                - np.outer(mean, stats.sum_y)
                - np.outer(stats.sum_y, mean)
                + N * np.outer(mean, mean)
            ) / np.outer(sd, sd)
            B = beta.T  # (p, d)
            cross = B.T @ xty
            R = yty - cross - cross.T + B.T @ xtx @ B
            site_cross = offset.T @ residual_sum
            R = R - site_cross - site_cross.T + (offset.T * site_n) @ offset
            self.residual_covariance = (R + R.T) / 2 / (N - p)
        self._fitted = True
        return self

    # -- prediction -------------------------------------------------------------------------
    def predict(self, covariates: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and variance per feature, (n, d) each, in the latent's own units."""
        mean, variance = self.predict_standardised(covariates)
        return mean * self.control_sd + self.control_mean, variance * self.control_sd**2

    def predict_standardised(self, covariates: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """As `predict`, on the controls-standardised scale (see `standardise`)."""
        self._check_fitted()
        X = self.design_matrix(covariates)
        self._warn_out_of_range(covariates)
        mean = X @ self.beta.T
        index = self._site_index(covariates)
        known = index >= 0
        # u_s = ρ_s (ȳ_s − x̄_sᵀβ) + noise, so xᵀβ + u_s = (x − ρ_s x̄_s)ᵀβ + ...: the parameter
        # uncertainty of a known site's prediction uses x̃ = x − ρ_s x̄_s (β and u_s correlate)
        shrinkage = np.zeros((len(X), self.beta.shape[0]))
        site_mean_x = np.zeros_like(X)
        shrinkage[known] = self.site_shrinkage[index[known]]
        site_mean_x[known] = self.site_mean_x[index[known]]
        X_effective = X[:, None, :] - shrinkage[:, :, None] * site_mean_x[:, None, :]
        covariance = self.beta_covariance()
        variance = self.noise_variance + np.einsum(
            "nfp,fpq,nfq->nf", X_effective, covariance, X_effective
        )
        mean[known] += self.site_offset[index[known]]
        variance[known] += self.site_offset_variance[index[known]]
        variance[~known] += self.site_variance
        return mean, variance

    def z_scores(self, covariates: pd.DataFrame, Y: np.ndarray) -> np.ndarray:
        mean, variance = self.predict(covariates)
        Y = self.clip_latent(self._check_Y(Y, len(covariates)))
        return (Y - mean) / np.sqrt(variance)

    def standardise(self, Y: np.ndarray) -> np.ndarray:
        """(Y − controls' mean) / controls' sd: the scale cosine scores need (after the
        model's latent clip, for a DP model)."""
        self._check_fitted()
        return (self.clip_latent(Y) - self.control_mean) / self.control_sd

    def design_matrix(self, covariates: pd.DataFrame) -> np.ndarray:
        """The design rows as the model sees them: clipped like its controls' were (DP models)."""
        return clip_design_rows(self.design.build(covariates), self.covariate_clip)

    def clip_latent(self, Y: np.ndarray) -> np.ndarray:
        """z_sem rows clipped to the model's latent clip (unchanged for a non-private model)."""
        Y = np.asarray(Y, dtype=np.float64)
        if self.latent_clip is None:
            return Y
        return clip_row_norms(Y[:, None] if Y.ndim == 1 else Y, self.latent_clip).reshape(Y.shape)

    def beta_covariance(self) -> np.ndarray:
        """Posterior covariance of β per feature, (d, p, p), standardised scale."""
        return self.noise_variance[:, None, None] * np.linalg.inv(self.beta_precision)

    @property
    def coefficients(self) -> np.ndarray:
        """β in the latent's own units, (p, d): rows follow `design.column_names`."""
        self._check_fitted()
        coefficients = self.beta.T * self.control_sd
        coefficients[0] += self.control_mean
        return coefficients

    @property
    def site_offsets(self) -> pd.DataFrame:
        """Estimated site offsets in the latent's own units (rows: sites, columns: features)."""
        self._check_fitted()
        return pd.DataFrame(
            self.site_offset * self.control_sd, index=self.site_names, columns=self.feature_names
        )

    # -- new sites --------------------------------------------------------------------------
    def transfer(
        self,
        covariates: pd.DataFrame,
        Y: np.ndarray,
        site: str | None = None,
        site_variance: np.ndarray | float | None = None,
    ) -> "NormativeModel":
        """A copy of this model that knows a new site from a few of its controls.

        Only the new site's offset is estimated (the shrunken mean residual of its controls
        against the pooled prediction); β, σ² and τ² stay as fitted. The shrinkage uses the
        fitted τ²; a model fitted without site effects (τ² = 0) uses τ² = σ² instead (an
        offset as large as the noise is a priori plausible) unless `site_variance` is given.
        """
        self._check_fitted()
        Y = self._check_Y(Y, len(covariates))
        if site is None:
            if self.site_column not in covariates.columns:
                raise NdaeError(f"transfer needs a site name or a {self.site_column!r} column")
            names = covariates[self.site_column].astype(str).unique()
            if len(names) != 1:
                raise NdaeError(f"transfer takes one site's controls, got sites {list(names)}")
            site = str(names[0])
        if len(covariates) == 0:
            raise NdaeError(f"transfer to site {site!r} needs at least one control")
        pooled = covariates.drop(columns=[self.site_column], errors="ignore")
        mean, _ = self.predict_standardised(pooled)
        residual = self.standardise(Y) - mean
        if site_variance is None:
            tau2 = np.where(self.site_variance > 0, self.site_variance, self.noise_variance)
        else:
            tau2 = np.broadcast_to(np.asarray(site_variance, dtype=np.float64), mean.shape[1:])
        n = float(len(covariates))
        rho = n * tau2 / (self.noise_variance + n * tau2)
        model = deepcopy(self)
        names = list(model.site_names)
        if site in names:
            row = names.index(site)
            model.site_n = model.site_n.copy()
            model.site_n[row] = n
        else:
            names.append(site)
            row = len(names) - 1
            model.site_n = np.append(model.site_n, n)
            model.site_offset = np.vstack([model.site_offset, np.zeros_like(rho)])
            model.site_offset_variance = np.vstack([model.site_offset_variance, np.zeros_like(rho)])
            model.site_shrinkage = np.vstack([model.site_shrinkage, np.zeros_like(rho)])
            model.site_mean_x = np.vstack([model.site_mean_x, np.zeros(self.beta.shape[1])])
        model.site_names = names
        model.site_offset[row] = rho * residual.mean(0)
        model.site_offset_variance[row] = rho * self.noise_variance / n
        model.site_shrinkage[row] = rho
        model.site_mean_x[row] = self.design_matrix(covariates).mean(0)
        return model

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `model.npz` (arrays) and `model.json` (what a person needs to read it)."""
        self._check_fitted()
        directory = Path(directory)
        arrays = {
            "control_mean": self.control_mean,
            "control_sd": self.control_sd,
            "beta": self.beta,
            "beta_precision": self.beta_precision,
            "noise_variance": self.noise_variance,
            "site_variance": self.site_variance,
            "site_n": self.site_n,
            "site_offset": self.site_offset,
            "site_offset_variance": self.site_offset_variance,
            "site_shrinkage": self.site_shrinkage,
            "site_mean_x": self.site_mean_x,
            "covariate_min": self.covariate_min,
            "covariate_max": self.covariate_max,
        }
        if self.residual_covariance is not None:
            arrays["residual_covariance"] = self.residual_covariance
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        payload = buffer.getvalue()
        atomic_write_bytes(directory / "model.npz", payload)
        atomic_write_json(
            directory / "model.json",
            {
                "kind": "ndae normative model (Bayesian linear, random site intercept)",
                "version": MODEL_VERSION,
                "design": self.design.to_dict(),
                "design_columns": self.design.column_names,
                "feature_names": self.feature_names,
                "n_features": len(self.feature_names),
                "n_controls": self.n_controls,
                "sites": {name: float(n) for name, n in zip(self.site_names, self.site_n)},
                "covariate_range": {
                    column: [_finite_or_none(low), _finite_or_none(high)]
                    for column, low, high in zip(
                        self.design.continuous_columns, self.covariate_min, self.covariate_max
                    )
                },
                "prior_precision": self.prior_precision,
                "site_effects": self.site_effects,
                "n_iterations": self.n_iterations,
                "site_column": self.site_column,
                "clip": None if self.latent_clip is None else {
                    "covariate": self.covariate_clip, "latent": self.latent_clip},
                "model_npz_sha256": hashlib.sha256(payload).hexdigest(),
            },
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "NormativeModel":
        directory = Path(directory)
        json_path, npz_path = directory / "model.json", directory / "model.npz"
        for path in (json_path, npz_path):
            if not path.exists():
                raise NdaeError(f"normative model file not found: {path}")
        try:
            meta = json.loads(json_path.read_text())
        except json.JSONDecodeError as error:
            raise NdaeError(f"{json_path} is not valid JSON: {error}") from error
        if meta.get("version") != MODEL_VERSION:
            raise NdaeError(
                f"{json_path}: model version {meta.get('version')!r} is not supported "
                f"(expected {MODEL_VERSION})"
            )
        payload = npz_path.read_bytes()
        if hashlib.sha256(payload).hexdigest() != meta.get("model_npz_sha256"):
            raise NdaeError(f"{npz_path} does not match {json_path} (sha256 differs)")
        model = cls(
            design=DesignSpec.from_dict(meta["design"]),
            prior_precision=meta["prior_precision"],
            site_effects=meta["site_effects"],
            n_iterations=meta["n_iterations"],
            site_column=meta["site_column"],
        )
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            for key in arrays.files:
                setattr(model, key, arrays[key])
        if "residual_covariance" not in arrays.files:
            model.residual_covariance = None
        model.feature_names = list(meta["feature_names"])
        model.site_names = list(meta["sites"])
        model.n_controls = float(meta["n_controls"])
        clip = meta.get("clip") or {}
        model.covariate_clip = None if clip.get("covariate") is None else float(clip["covariate"])
        model.latent_clip = None if clip.get("latent") is None else float(clip["latent"])
        model._fitted = True
        return model

    # -- helpers ----------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        self._check_fitted()
        return len(self.feature_names)

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise NdaeError("the normative model is not fitted: call fit() or from_stats() first")

    def _check_Y(self, Y: np.ndarray, rows: int) -> np.ndarray:
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim == 1:
            Y = Y[:, None]
        if Y.shape != (rows, self.n_features):
            raise NdaeError(
                f"Y has shape {Y.shape}; expected ({rows}, {self.n_features}) "
                f"(rows of the covariates × the model's features)"
            )
        return Y

    def _site_index(self, covariates: pd.DataFrame) -> np.ndarray:
        if self.site_column not in covariates.columns or not self.site_names:
            return np.full(len(covariates), -1)
        lookup = {name: i for i, name in enumerate(self.site_names)}
        sites = covariates[self.site_column].astype(str).to_numpy()
        return np.array([lookup.get(s, -1) for s in sites], dtype=int)

    def _warn_out_of_range(self, covariates: pd.DataFrame) -> None:
        declared = self.design.age_range
        for column, low, high in zip(
            self.design.continuous_columns, self.covariate_min, self.covariate_max
        ):
            values = pd.to_numeric(covariates[column], errors="coerce").to_numpy(dtype=float)
            outside = (values < low) | (values > high)
            if outside.any():
                warnings.warn(
                    f"{outside.sum()} subject(s) have {column} outside the range the normative "
                    f"model was fitted on [{low:g}, {high:g}] (values {values[outside].min():g}"
                    f"–{values[outside].max():g}); predictions there are extrapolated",
                    OutOfRangeWarning,
                    stacklevel=3,
                )
            if column == self.design.age_column:
                beyond = (values < declared[0]) | (values > declared[1])
                if beyond.any():
                    warnings.warn(
                        f"{beyond.sum()} subject(s) have {column} outside the design's declared "
                        f"range [{declared[0]:g}, {declared[1]:g}]; the age basis is linear there",
                        OutOfRangeWarning,
                        stacklevel=3,
                    )


def _feature_names(names: list[str] | None, d: int) -> list[str]:
    if names is None:
        return [f"z_sem_{k}" for k in range(d)]
    names = [str(n) for n in names]
    if len(names) != d:
        raise NdaeError(f"{len(names)} feature names given for {d} features")
    return names


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
