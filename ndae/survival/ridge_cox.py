"""A ridge-penalised Cox model fitted by Newton–Raphson in numpy: the fast fitter behind the
truth-aware metrics (`ndae.evaluation.truth_metrics`), which refit every model on every fold of
every survival draw (50 draws × 5 folds × each model), where lifelines' `CoxPHFitter` is an order
of magnitude slower per fit (docs/evaluation.md); its coefficients equal lifelines' with the same
`penalizer` when times are untied (tests/test_truth_metrics.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ndae.errors import NdaeError

FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def as_matrix(X, name: str, error: type[NdaeError] = NdaeError) -> np.ndarray:
    """A finite (subjects × features) float matrix from an array or DataFrame; `error` names `name`."""
    X = np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise error(f"{name} must be a (subjects × features) matrix, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise error(f"{name} contains NaN or infinite values")
    return X


def fit_cox(X, time, event, penalizer: float = 0.01, max_iter: int = 50, tol: float = 1e-9):
    """Ridge-penalised Cox (Breslow ties) by Newton-Raphson; returns (beta, mean, scale).

    As lifelines: covariates are standardised on the data given, and the penalty is
    n · penalizer · ½‖β‖² on the standardised scale (so `penalizer` means the same as there).
    A column that does not vary gets β = 0. Returns β on the standardised scale."""
    X = as_matrix(X, "X")
    time, event = np.asarray(time, float), np.asarray(event).astype(float)
    n, p = X.shape
    mean = X.mean(0)
    scale = X.std(0)
    constant = scale < 1e-12
    scale[constant] = 1.0
    Z = (X - mean) / scale
    Z[:, constant] = 0.0
    order = np.argsort(-time, kind="stable")  # descending: the risk set of i is a prefix
    Z, t, e = Z[order], time[order], event[order]
    last = np.searchsorted(-t, -t, side="right") - 1  # end of i's tie block: ties share a risk set
    events = e > 0
    penalty = n * float(penalizer)
    beta = np.zeros(p)

    def state(b):
        eta = Z @ b
        shift = eta.max()
        w = np.exp(eta - shift)
        s0 = np.cumsum(w)[last]
        ll = float(np.sum(e * (eta - shift - np.log(s0)))) - 0.5 * penalty * float(b @ b)
        return eta, w, s0, ll

    eta, w, s0, ll = state(beta)
    for _ in range(max_iter):
        s1 = np.cumsum(w[:, None] * Z, 0)[last]
        s2 = np.cumsum(w[:, None, None] * Z[:, :, None] * Z[:, None, :], 0)[last]
        mean1 = s1[events] / s0[events, None]
        gradient = (Z[events] - mean1).sum(0) - penalty * beta
        hessian = (s2[events] / s0[events, None, None]).sum(0) - mean1.T @ mean1 + penalty * np.eye(p)
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        size = 1.0
        while True:  # step halving keeps the (concave) objective rising
            candidate = beta + size * step
            c_eta, c_w, c_s0, c_ll = state(candidate)
            if c_ll >= ll - 1e-12 or size < 1e-4:
                break
            size /= 2
        beta, eta, w, s0, change, ll = candidate, c_eta, c_w, c_s0, c_ll - ll, c_ll
        if np.max(np.abs(size * step)) < tol or abs(change) < tol:
            break
    return beta, mean, scale


def cox_fit_predict(penalizer: float = 0.01) -> FitPredict:
    """A `fit_predict` for a ridge Cox on all columns of X: test risk = standardised Xβ."""

    def fit_predict(X_train, time_train, event_train, X_test):
        beta, mean, scale = fit_cox(X_train, time_train, event_train, penalizer)
        return ((as_matrix(X_test, "X_test") - mean) / scale) @ beta

    return fit_predict
