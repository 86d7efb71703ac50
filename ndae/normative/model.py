"""The normative model of the controls' latent: z_sem ~ age basis + sex + site, per feature.

Model (per feature f, computed entirely from `SufficientStats`, so a federated fit equals the
pooled fit):

- The latent is first standardised with the healthy controls' mean and sd (from ΣY, ΣY², n):
  the raw z_sem sits on a large shared mean, and both the weak prior below and the cosine score
  (`ndae.deviation.scores`) only make sense on the standardised scale.
- y = xᵀβ + u_site + ε,  ε ~ N(0, σ²),  u_site ~ N(0, τ²)  (a random site intercept),
  β ~ N(0, σ²/λ · I) with a weak ridge λ (`prior_precision`, default 1e-3).
- σ², τ² and β are estimated by EM on the random-intercept model (`ndae.normative.random_intercept`): β is the GLS estimate, which
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
without refitting β, σ², τ² (as PCNtoolkit's transfer does; `ndae.normative.transfer`).
`save` / `load`: model.npz + model.json (`ndae.normative.model_files`).

State: the model is a dataclass. Its options are the constructor's fields; every fitted attribute
is declared below with its shape, None until `fit_stats` (or `load`) sets them all at once
(`_set_fitted`), and the field's `stored_in` says which file keeps it: the save/load code reads
the list from here.

This module holds the model as a whole and what it predicts: `fit` / `from_stats`, `predict`,
`predict_standardised`, `z_scores`, `standardise`, the DP clips, and the fitted range warnings.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.normative.design import DesignSpec, clip_design_rows, clip_row_norms
from ndae.normative.model_files import load_model, save_model
from ndae.normative.random_intercept import fit_random_intercept
from ndae.normative.sufficient_stats import SufficientStats
from ndae.normative.transfer import transfer_to_site


class OutOfRangeWarning(UserWarning):
    """A prediction for covariates outside the range the model was fitted on."""


def _fitted_field(stored_in: str, optional: bool = False) -> Any:
    """A fitted attribute: None until fitted; `stored_in`: "npz" (an array in model.npz) or
    "json" (model.json, each in its own format); `optional`: may stay None in a fitted model."""
    # a factory, not a default: dataclasses then set it on the instance (a default stays on the class)
    return field(default_factory=_none, init=False, metadata={"stored_in": stored_in, "optional": optional})


def _none() -> None:
    return None


@dataclass(eq=False, repr=False)  # a model compares by identity and prints no arrays
class NormativeModel:
    """Bayesian linear normative model with random site intercepts; `fit` / `predict`.

    Shapes: d features, p design columns, S sites with controls, c continuous covariates; all on
    the controls-standardised scale except `control_mean` / `control_sd` themselves."""

    design: DesignSpec | None = None
    prior_precision: float = 1e-3
    site_effects: bool = True
    n_iterations: int = 200
    site_column: str = "site"
    feature_names: list[str] | None = field(default_factory=_none, init=False)
    # -- fitted (`ndae.normative.random_intercept.fit_random_intercept` returns one value per name)
    control_mean: np.ndarray | None = _fitted_field("npz")  # (d,) the controls' mean of the raw latent
    control_sd: np.ndarray | None = _fitted_field("npz")  # (d,) and its sd
    beta: np.ndarray | None = _fitted_field("npz")  # (d, p)
    beta_precision: np.ndarray | None = _fitted_field("npz")  # (d, p, p) A; posterior covariance of β = σ² A⁻¹
    noise_variance: np.ndarray | None = _fitted_field("npz")  # (d,) σ²
    site_variance: np.ndarray | None = _fitted_field("npz")  # (d,) τ², the variance of a new site's offset
    site_names: list[str] | None = _fitted_field("json")  # the S sites with controls
    site_n: np.ndarray | None = _fitted_field("npz")  # (S,) their controls
    site_offset: np.ndarray | None = _fitted_field("npz")  # (S, d) u_s (BLUP)
    site_offset_variance: np.ndarray | None = _fitted_field("npz")  # (S, d) Var(u_s | β)
    site_shrinkage: np.ndarray | None = _fitted_field("npz")  # (S, d) ρ_s
    site_mean_x: np.ndarray | None = _fitted_field("npz")  # (S, p) the site's mean design row
    n_controls: float | None = _fitted_field("json")
    covariate_min: np.ndarray | None = _fitted_field("npz")  # (c,) the fitted range of the continuous covariates
    covariate_max: np.ndarray | None = _fitted_field("npz")  # (c,)
    covariate_clip: float | None = _fitted_field("json", optional=True)  # DP fits only (see module docstring)
    latent_clip: float | None = _fitted_field("json", optional=True)  # DP fits only
    residual_covariance: np.ndarray | None = _fitted_field("npz", optional=True)  # (d, d); None without cross-products

    def __post_init__(self) -> None:
        self.design = self.design or DesignSpec()
        self.prior_precision = float(self.prior_precision)
        self.site_effects = bool(self.site_effects)
        self.n_iterations = int(self.n_iterations)
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
        """Fit from (pooled or federated-summed) sufficient statistics
        (`ndae.normative.random_intercept`)."""
        self.design = stats.design
        fitted = fit_random_intercept(stats, self.prior_precision, self.site_effects, self.n_iterations)
        self.feature_names = _feature_names(feature_names, stats.n_features)
        self._set_fitted(fitted)
        return self

    @classmethod
    def fitted_fields(cls, stored_in: str | None = None) -> list[str]:
        """The fitted attributes' names in declaration order (only those kept in `stored_in`)."""
        return [item.name for item in fields(cls)
                if "stored_in" in item.metadata and stored_in in (None, item.metadata["stored_in"])]

    @classmethod
    def optional_fields(cls) -> set[str]:
        """The fitted attributes a fitted model may leave None (DP clips, residual covariance)."""
        return {item.name for item in fields(cls) if item.metadata.get("optional")}

    def _set_fitted(self, values: Mapping[str, Any]) -> None:
        """Every fitted attribute at once, from a fit or from files: a name not declared above, or
        one left out, is a bug in the code that produced `values`."""
        declared = self.fitted_fields()
        if set(values) != set(declared):
            raise NdaeError(f"normative model: fitted values {sorted(set(values) ^ set(declared))} are not "
                            "what NormativeModel declares")
        for name in declared:
            setattr(self, name, values[name])
        self._fitted = True

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
        index = self.site_index(covariates)
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
        Y = self.clip_latent(self.check_latents(Y, len(covariates)))
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

    # -- new sites and files -------------------------------------------------------------
    def transfer(
        self,
        covariates: pd.DataFrame,
        Y: np.ndarray,
        site: str | None = None,
        site_variance: np.ndarray | float | None = None,
    ) -> "NormativeModel":
        """A copy of this model that knows a new site from a few of its controls
        (`ndae.normative.transfer.transfer_to_site`: only the site's offset is estimated)."""
        return transfer_to_site(self, covariates, Y, site, site_variance)

    def save(self, directory: str | Path) -> Path:
        """Write `model.npz` (arrays) and `model.json` (what a person needs to read it)."""
        self._check_fitted()
        return save_model(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> "NormativeModel":
        return load_model(cls, directory)

    # -- helpers ----------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        self._check_fitted()
        return len(self.feature_names)

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise NdaeError("the normative model is not fitted: call fit() or from_stats() first")

    def check_latents(self, Y: np.ndarray, rows: int) -> np.ndarray:
        """`Y` as a float (rows, features) array: a 1-D vector is one feature's column; any other
        shape is refused (before a 1-D row could be clipped element by element)."""
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim == 1:
            Y = Y[:, None]
        if Y.shape != (rows, self.n_features):
            raise NdaeError(
                f"Y has shape {Y.shape}; expected ({rows}, {self.n_features}) "
                f"(rows of the covariates × the model's features)"
            )
        return Y

    def site_index(self, covariates: pd.DataFrame) -> np.ndarray:
        """Each row's index into `site_names`; -1 for a site without controls in the fit (or no
        site column): the rows predicted as from a new, unseen site."""
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

