"""A fitted normative model extended to a new site from a few of its controls (no refit).

Only the new site's offset is estimated: the shrunken mean residual of its controls against the
pooled prediction; β, σ² and τ² stay as fitted (as PCNtoolkit's transfer does).
"""

from __future__ import annotations

from copy import deepcopy
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ndae.errors import NdaeError

if TYPE_CHECKING:
    from ndae.normative.model import NormativeModel


def transfer_to_site(model: "NormativeModel", covariates: pd.DataFrame, Y: np.ndarray, site: str | None = None,
                     site_variance: np.ndarray | float | None = None) -> "NormativeModel":
    """A copy of `model` that knows a new site from a few of its controls.

    The shrinkage uses the fitted τ²; a model fitted without site effects (τ² = 0) uses τ² = σ²
    instead (an offset as large as the noise is a priori plausible) unless `site_variance` is given.
    """
    model._check_fitted()
    Y = model.check_latents(Y, len(covariates))
    if site is None:
        if model.site_column not in covariates.columns:
            raise NdaeError(f"transfer needs a site name or a {model.site_column!r} column")
        names = covariates[model.site_column].astype(str).unique()
        if len(names) != 1:
            raise NdaeError(f"transfer takes one site's controls, got sites {list(names)}")
        site = str(names[0])
    if len(covariates) == 0:
        raise NdaeError(f"transfer to site {site!r} needs at least one control")
    pooled = covariates.drop(columns=[model.site_column], errors="ignore")
    mean, _ = model.predict_standardised(pooled)
    residual = model.standardise(Y) - mean
    if site_variance is None:
        tau2 = np.where(model.site_variance > 0, model.site_variance, model.noise_variance)
    else:
        tau2 = np.broadcast_to(np.asarray(site_variance, dtype=np.float64), mean.shape[1:])
    n = float(len(covariates))
    rho = n * tau2 / (model.noise_variance + n * tau2)
    new = deepcopy(model)
    names = list(new.site_names)
    if site in names:
        row = names.index(site)
        new.site_n = new.site_n.copy()
        new.site_n[row] = n
    else:
        names.append(site)
        row = len(names) - 1
        new.site_n = np.append(new.site_n, n)
        new.site_offset = np.vstack([new.site_offset, np.zeros_like(rho)])
        new.site_offset_variance = np.vstack([new.site_offset_variance, np.zeros_like(rho)])
        new.site_shrinkage = np.vstack([new.site_shrinkage, np.zeros_like(rho)])
        new.site_mean_x = np.vstack([new.site_mean_x, np.zeros(model.beta.shape[1])])
    new.site_names = names
    new.site_offset[row] = rho * residual.mean(0)
    new.site_offset_variance[row] = rho * model.noise_variance / n
    new.site_shrinkage[row] = rho
    new.site_mean_x[row] = model.design_matrix(covariates).mean(0)
    return new
