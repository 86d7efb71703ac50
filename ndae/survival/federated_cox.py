"""Federated site-stratified Cox regression by Newton–Raphson.

Each site is its own stratum, so the pooled log partial likelihood is a plain sum over sites:
    l(beta) = sum_s l_s(beta),   grad = sum_s grad_s,   hessian = sum_s hessian_s.
A site therefore never shares a row: per Newton step it sends only its gradient (p), Hessian
(p x p), log partial likelihood (scalar), n and number of events, computed by
`site_partial_likelihood_terms`. The server (`FederatedCoxFitter`) sums them and steps.

Ties use Efron's approximation, exactly as lifelines does. With `penalizer > 0` the penalty is
lifelines' L2 one: `n * penalizer * 0.5 * ||beta * sd||^2`, i.e. on covariates standardised with
the pooled standard deviation, which the server computes from each site's summable moments
(`site_covariate_moments`: n, sum, sum of squares).

`FederatedCoxFitter` speaks lifelines' CoxPHFitter API, as `CoxModel` does: `fit(sites,
duration_col, event_col, covariates=...)`, `summary`, `params_`, `standard_errors_`,
`hazard_ratios_`, `confidence_intervals_` (`ndae.survival.cox.CoxResults`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.survival._validation import validate_survival_frame
from ndae.survival.cox import CoxResults, lifelines_fit_arguments

SiteTerms = dict[str, np.ndarray]


class MonotoneLikelihoodError(NdaeError):
    """No finite Cox model exists: some covariates order the events (almost) perfectly. A finding
    about the data (a server may report it and go on), unlike the fitter's other refusals."""

# Information along a Newton step below this fraction of ONE EVENT's share of its value at beta = 0
# means a monotone likelihood (separation). Per event, because a finite fit keeps at least about
# one event's worth of information (a binary covariate with a single event in one arm: the
# information at the MLE is ~1, whatever the number of other events), while a monotone likelihood
# loses it geometrically, by ~e per Newton step (tests/test_attack_site_cox_refusal.py checks the
# margin on both sides: an extreme finite fit passes, separation is refused within a few steps).
MONOTONE_INFORMATION_RATIO = 0.05
# The longest Newton step, in sd units of the linear predictor (measured with one event's share of
# the information at beta = 0): a step from a flat start can overshoot a finite but extreme MLE
# far into the flat tail beyond it, and each step back is another message round to every site.
MAX_STANDARDISED_STEP = 5.0


def site_partial_likelihood_terms(
    df_site: pd.DataFrame,
    beta: np.ndarray,
    covariates: Sequence[str],
    duration_col: str = "time",
    event_col: str = "event",
) -> SiteTerms:
    """Gradient, Hessian and log of one site's Efron partial likelihood at `beta`.

    Returns numpy arrays only (the message payload): `gradient` (p,), `hessian` (p, p),
    `log_likelihood` (), `n` (), `events` ().
    """
    covariates = list(covariates)
    x = df_site[covariates].to_numpy(dtype=float)
    time = df_site[duration_col].to_numpy(dtype=float)
    event = df_site[event_col].to_numpy(dtype=float).astype(bool)
    beta = np.asarray(beta, dtype=float).reshape(len(covariates))
    gradient, hessian, log_likelihood = efron_terms(x, time, event, beta)
    return {
        "gradient": gradient,
        "hessian": hessian,
        "log_likelihood": np.asarray(log_likelihood, dtype=float),
        "n": np.asarray(len(time), dtype=np.int64),
        "events": np.asarray(int(event.sum()), dtype=np.int64),
    }


def site_covariate_moments(df_site: pd.DataFrame, covariates: Sequence[str]) -> SiteTerms:
    """Summable moments (n, sum, sum of squares) for the pooled mean and standard deviation."""
    x = df_site[list(covariates)].to_numpy(dtype=float)
    return {
        "n": np.asarray(x.shape[0], dtype=np.int64),
        "sum": x.sum(axis=0),
        "sum_of_squares": (x**2).sum(axis=0),
    }


def efron_terms(x: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Efron log partial likelihood of one stratum, with its gradient and Hessian.

    For each distinct event time t with d tied deaths D and risk set R = {i: T_i >= t}:
        l += sum_D eta_i - sum_{k=0}^{d-1} log(S0_R - k/d * S0_D)
    where S0 = sum exp(eta); gradient and Hessian follow with S1 = sum exp(eta) x and
    S2 = sum exp(eta) x x^T taken the same way.
    """
    n, p = x.shape
    if n == 0 or not event.any():
        return np.zeros(p), np.zeros((p, p)), 0.0
    # The likelihood is invariant to a constant shift of x or of eta within a stratum: centring
    # x and subtracting max(eta) keep exp() far from overflow without changing any term.
    x = x - x.mean(axis=0)
    eta = x @ beta
    risk = np.exp(eta - eta.max())

    # Group rows by distinct time, latest first, so that cumulative sums give risk-set sums.
    unique_times, group = np.unique(-time, return_inverse=True)
    n_groups = len(unique_times)
    weighted_x = risk[:, None] * x
    weighted_xx = weighted_x[:, :, None] * x[:, None, :]

    def by_group(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        out = np.zeros((n_groups, *values.shape[1:]))
        if mask is None:
            np.add.at(out, group, values)
        else:
            np.add.at(out, group[mask], values[mask])
        return out

    s0_risk = np.cumsum(by_group(risk), axis=0)
    s1_risk = np.cumsum(by_group(weighted_x), axis=0)
    s2_risk = np.cumsum(by_group(weighted_xx), axis=0)
    s0_deaths = by_group(risk, event)
    s1_deaths = by_group(weighted_x, event)
    s2_deaths = by_group(weighted_xx, event)
    deaths = np.bincount(group[event], minlength=n_groups)

    # One entry per (event time, k) with k = 0..d-1: Efron's fraction k/d of the tied deaths
    # is taken out of the risk set.
    event_groups = np.flatnonzero(deaths)
    repeated = np.repeat(event_groups, deaths[event_groups])
    offsets = np.cumsum(deaths[event_groups]) - deaths[event_groups]
    k = np.arange(len(repeated)) - np.repeat(offsets, deaths[event_groups])
    fraction = k / deaths[repeated]

    phi = s0_risk[repeated] - fraction * s0_deaths[repeated]
    z = s1_risk[repeated] - fraction[:, None] * s1_deaths[repeated]
    q = s2_risk[repeated] - fraction[:, None, None] * s2_deaths[repeated]
    mean_x = z / phi[:, None]

    log_likelihood = float((eta - eta.max())[event].sum() - np.log(phi).sum())
    gradient = x[event].sum(axis=0) - mean_x.sum(axis=0)
    hessian = -((q / phi[:, None, None]).sum(axis=0) - np.einsum("ki,kj->ij", mean_x, mean_x))
    return gradient, hessian, log_likelihood


class DataFrameSite:
    """A site whose rows are local: computes its own messages (used in tests and simulation)."""

    def __init__(self, df_site: pd.DataFrame, covariates: Sequence[str], duration_col: str = "time", event_col: str = "event", name: str = "site"):
        # A site without events is legal: it adds nothing to its own stratum's likelihood.
        validate_survival_frame(df_site, covariates, duration_col, event_col, where=f"site {name!r}", require_events=False)
        self.df_site, self.covariates, self.name = df_site, list(covariates), name
        self.duration_col, self.event_col = duration_col, event_col

    def covariate_moments(self) -> SiteTerms:
        return site_covariate_moments(self.df_site, self.covariates)

    def partial_likelihood_terms(self, beta: np.ndarray) -> SiteTerms:
        return site_partial_likelihood_terms(self.df_site, beta, self.covariates, self.duration_col, self.event_col)


@dataclass
class _CallableSite:
    """Wraps `beta -> terms` (e.g. a Flower round trip); it cannot send moments."""

    terms: Callable[[np.ndarray], SiteTerms]
    moments: Callable[[], SiteTerms] | None = None

    def covariate_moments(self) -> SiteTerms | None:
        return self.moments() if self.moments else None

    def partial_likelihood_terms(self, beta: np.ndarray) -> SiteTerms:
        return self.terms(beta)


class FederatedCoxFitter(CoxResults):
    """Server side of federated site-stratified Cox regression (lifelines' API and results).

    `fit(sites, duration_col, event_col, covariates=...)` takes a mapping or list whose items are
    either DataFrames (a site's local rows, used in simulation; `duration_col` and `event_col`
    name their columns) or callables `beta -> terms dict` (a remote site), or objects with
    `partial_likelihood_terms(beta)` and optionally `covariate_moments()`.
    """

    def __init__(self, penalizer: float = 0.0, alpha: float = 0.05, tolerance: float = 1e-10, max_steps: int = 100):
        if penalizer < 0:
            raise NdaeError(f"penalizer must be >= 0, got {penalizer}")
        self.penalizer, self.alpha, self.tolerance, self.max_steps = float(penalizer), alpha, tolerance, max_steps

    def fit(
        self,
        sites: Mapping[str, Any] | Sequence[Any],
        duration_col: str | None = None,
        event_col: str | None = None,
        covariates: Sequence[str] | None = None,
    ) -> "FederatedCoxFitter":
        duration_col, event_col, covariates = lifelines_fit_arguments(duration_col, event_col, covariates,
                                                                      "FederatedCoxFitter")
        duration_col, event_col = duration_col or "time", event_col or "event"
        if covariates is None:  # no table to take them from: a remote site sends only sums
            raise NdaeError("federated Cox: name the covariates (fit(sites, duration_col, event_col, covariates=...))")
        self.covariates = list(covariates)
        named = dict(sites) if isinstance(sites, Mapping) else {f"site_{i}": s for i, s in enumerate(sites)}
        if not named:
            raise NdaeError("federated Cox: no sites given")
        self.sites_ = {name: self._as_site(site, name, duration_col, event_col) for name, site in named.items()}
        p = len(self.covariates)

        scale = np.ones(p)
        if self.penalizer > 0:
            scale = self._pooled_standard_deviation()
        self.penalty_scale_ = scale

        beta = np.zeros(p)
        total = self._collect(beta)
        self.log_likelihood_null_ = float(total["log_likelihood"])
        self.n_ = None if total["n"] is None else int(total["n"])
        self.events_ = None if total["events"] is None else int(total["events"])
        if self.events_ == 0 or not np.any(total["hessian"]):  # no event: the likelihood is flat
            raise NdaeError("federated Cox: no events at any site")
        objective, gradient, hessian = self._penalised(total, beta)
        # one event's share of the information at beta = 0 (see MONOTONE_INFORMATION_RATIO)
        information_at_zero = -total["hessian"] / self._events_at_most(self.log_likelihood_null_)
        self.n_rounds_ = 1
        converged = False
        for _ in range(self.max_steps):
            try:
                delta = np.linalg.solve(-hessian, gradient)
            except np.linalg.LinAlgError as error:
                raise NdaeError(f"federated Cox: singular Hessian (collinear covariates among {self.covariates}?)") from error
            if self.penalizer == 0:
                delta = self._bounded_step(delta, gradient, information_at_zero)
            step = 1.0
            # Newton step, halved while the (penalised) likelihood would decrease.
            while True:
                candidate = beta + step * delta
                total_candidate = self._collect(candidate)
                self.n_rounds_ += 1
                new_objective, new_gradient, new_hessian = self._penalised(total_candidate, candidate)
                if np.isfinite(new_objective) and new_objective >= objective - 1e-12 * abs(objective):
                    break
                if step < 1e-6:
                    raise NdaeError(f"federated Cox: no step from beta = {np.round(beta, 6).tolist()} along the Newton "
                                    f"direction keeps the likelihood finite and rising (covariates {self.covariates})")
                step /= 2
            moved = step * delta
            self._refuse_monotone_likelihood(candidate, moved, new_gradient, new_hessian, information_at_zero)
            beta, total = candidate, total_candidate
            objective, gradient, hessian = new_objective, new_gradient, new_hessian
            if np.linalg.norm(step * delta) < self.tolerance:
                converged = True
                break
        if not converged:
            raise NdaeError(f"federated Cox: Newton–Raphson did not converge in {self.max_steps} steps")

        index = pd.Index(self.covariates, name="covariate")  # as lifelines names it
        self.params_ = pd.Series(beta, index=index, name="coef")
        # Unpenalised log partial likelihood (lifelines reports it minus the penalty).
        self.log_likelihood_ = float(total["log_likelihood"])
        self.gradient_ = gradient
        self.hessian_ = hessian
        self.variance_matrix_ = pd.DataFrame(np.linalg.inv(-hessian), index=self.covariates, columns=self.covariates)
        self.standard_errors_ = pd.Series(np.sqrt(np.diag(self.variance_matrix_)), index=index, name="se")
        return self

    def predict_log_partial_hazard(self, df: pd.DataFrame) -> np.ndarray:
        """x·beta (uncentred): higher means higher risk; only differences are meaningful."""
        return df[self.covariates].to_numpy(dtype=float) @ self.params_.to_numpy()

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _bounded_step(delta: np.ndarray, gradient: np.ndarray, information_at_zero: np.ndarray) -> np.ndarray:
        """The Newton step, at most MAX_STANDARDISED_STEP long. In the flat tail beyond an
        overshot MLE the Hessian is zero to rounding and can point the step downhill: there
        the step follows the gradient instead (the line search then halves it back)."""
        def length(vector: np.ndarray) -> float:
            return float(np.sqrt(max(vector @ information_at_zero @ vector, 0.0)))

        if not float(delta @ gradient) > 0 and np.any(gradient) and length(gradient) > 0:
            delta = gradient * (MAX_STANDARDISED_STEP / length(gradient))
        if length(delta) > MAX_STANDARDISED_STEP:
            delta = delta * (MAX_STANDARDISED_STEP / length(delta))
        return delta

    def _events_at_most(self, log_likelihood_null: float) -> float:
        """The number of events when every site sent its count; else the most events the log
        partial likelihood at beta = 0 allows (private sites withhold counts). In each site's
        stratum the k-th last event's risk set holds at least k rows (Efron's tie terms too), so
        -l_s(0) >= log(D_s!); summed over S sites, by convexity, -l(0) >= S log((D/S)!). An upper
        bound makes one event's share smaller, so the refusal below can only come later."""
        from scipy.special import gammaln

        if self.events_ is not None:
            return float(max(self.events_, 1))
        sites, budget = len(self.sites_), max(-float(log_likelihood_null), 0.0)
        low, high = 1.0, 2.0
        while sites * gammaln(high / sites + 1.0) <= budget:
            low, high = high, 2.0 * high
        while high - low > 1e-6 * high:
            middle = (low + high) / 2
            low, high = (middle, high) if sites * gammaln(middle / sites + 1.0) <= budget else (low, middle)
        return high

    def _refuse_monotone_likelihood(self, beta: np.ndarray, moved: np.ndarray, gradient: np.ndarray,
                                    hessian: np.ndarray, information_at_zero: np.ndarray) -> None:
        """Stop at the first sign of a monotone likelihood (a covariate, or a combination, orders
        the events perfectly, so the MLE is at infinity): the information along the step has all
        but vanished compared with one event's share of it at beta = 0. Otherwise Newton walks on to huge beta,
        each step one more message round to every site, until exp() overflows or the sites refuse
        the coefficients. The ratio is scale-free in the covariates and in the number of events,
        so no site need share a standard deviation or a count; a finite fit keeps it far above the
        threshold. A ridge penalty keeps the likelihood strictly concave: nothing to detect."""
        if self.penalizer > 0 or not np.any(moved):
            return
        start = float(moved @ information_at_zero @ moved)
        now = float(moved @ -hessian @ moved)
        # Past a finite MLE the information vanishes too (a step overshot it into the flat tail):
        # there the likelihood falls further out, or the step is on its way back towards zero.
        # A monotone likelihood still rises (or is flat to the last bit) further out, on a path
        # that only leads away from zero.
        outwards = float(gradient @ moved) >= 0 and float(moved @ information_at_zero @ beta) > 0
        if start > 0 and now < MONOTONE_INFORMATION_RATIO * start and outwards:
            weight = np.abs(moved) * np.sqrt(np.clip(np.diag(information_at_zero), 0, None))
            named = [c for c, w in zip(self.covariates, weight) if w >= 0.3 * weight.max()]
            raise MonotoneLikelihoodError(
                f"federated Cox: monotone likelihood — {named} order the events (almost) perfectly, so the "
                f"coefficients grow without bound and no finite Cox model exists for covariates {self.covariates}; "
                "fit fewer scores (survival-features), more patients, or a penalised model")

    def _as_site(self, site: Any, name: str, duration_col: str, event_col: str) -> Any:
        if isinstance(site, pd.DataFrame):
            return DataFrameSite(site, self.covariates, duration_col, event_col, name=name)
        if hasattr(site, "partial_likelihood_terms"):
            return site
        if callable(site):
            return _CallableSite(site)
        raise NdaeError(f"federated Cox: site {name!r} is a {type(site).__name__}, expected a DataFrame or callable")

    def _collect(self, beta: np.ndarray) -> SiteTerms:
        total: SiteTerms = {}
        for name, site in self.sites_.items():
            terms = site.partial_likelihood_terms(beta.copy())
            for key in ("gradient", "hessian", "log_likelihood"):
                if key not in terms:
                    raise NdaeError(f"federated Cox: site {name!r} sent no {key!r}")
                total[key] = total.get(key, 0) + np.asarray(terms[key], dtype=float)
            # n and events are counts a private site may withhold: totals only if every site sent them.
            for key in ("n", "events"):
                if key in terms and total.get(key, 0) is not None:
                    total[key] = total.get(key, 0) + np.asarray(terms[key], dtype=float)
                else:
                    total[key] = None
        return total

    def _penalised(self, total: SiteTerms, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        objective, gradient, hessian = float(total["log_likelihood"]), total["gradient"].copy(), total["hessian"].copy()
        if self.penalizer > 0:
            # lifelines: penalty n * c * 0.5 * ||beta_standardised||^2 with beta_standardised = beta * sd.
            weight = self.n_ * self.penalizer * self.penalty_scale_**2
            objective -= 0.5 * float((weight * beta**2).sum())
            gradient -= weight * beta
            hessian[np.diag_indices_from(hessian)] -= weight
        return objective, gradient, hessian

    def _pooled_standard_deviation(self) -> np.ndarray:
        n, total, squares = 0.0, 0.0, 0.0
        for name, site in self.sites_.items():
            moments = site.covariate_moments() if hasattr(site, "covariate_moments") else None
            if moments is None:
                raise NdaeError(f"federated Cox: penalizer > 0 needs covariate moments, site {name!r} sent none")
            n, total, squares = n + float(moments["n"]), total + moments["sum"], squares + moments["sum_of_squares"]
        self.n_ = int(n)
        # Sample standard deviation (ddof=1), as pandas' .std() that lifelines uses.
        variance = (squares - total**2 / n) / (n - 1)
        if np.any(variance <= 0):
            constant = [c for c, v in zip(self.covariates, variance) if v <= 0]
            raise NdaeError(f"federated Cox: covariate(s) {constant} are constant across all sites")
        return np.sqrt(variance)
