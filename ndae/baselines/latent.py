"""Baselines 4 and 5 on the DAE's own latent, without the normative model.

4. `LatentPCABaseline`: principal components of `z_sem`, standardised with the controls' mean and
   sd and fitted on the controls (raw `z_sem` is nearly rank 1: docs/dae.md).
5. `BrainAgeBaseline`: ridge regression of age on standardised `z_sem`, penalty chosen inside the
   training data. Cross-fitted: K models, each trained on the controls outside one fold; a control
   is predicted by the model that did not see it, a patient by the mean of the K models. The gap
   predicted − true age is corrected for the usual regression to the mean with a linear fit of the
   controls' out-of-fold gap on age (Smith et al. 2019, NeuroImage 186:528), so a typical control
   has gap ≈ 0 at every age.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ndae.baselines.common import BaselineUnavailable, check_controls, check_rows, control_mask


def _standardiser(z_controls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = z_controls.mean(0)
    sd = z_controls.std(0, ddof=1)
    return mean, np.where(sd > 1e-12, sd, 1.0)


class LatentPCABaseline:
    """`fit(z_sem of controls)`; `features(subjects, z_sem)` → `pca_1 … pca_k`."""

    def __init__(self, n_components: int = 5, min_controls: int = 4):
        self.n_components = int(n_components)
        self.min_controls = int(min_controls)

    def fit(self, z_controls: np.ndarray) -> "LatentPCABaseline":
        from sklearn.decomposition import PCA

        z = np.asarray(z_controls, dtype=np.float64)
        check_controls("the latent PCA baseline", np.ones(len(z), bool), self.min_controls)
        self.mean_, self.sd_ = _standardiser(z)
        k = max(1, min(self.n_components, len(z) - 1, z.shape[1]))
        self.pca_ = PCA(n_components=k).fit((z - self.mean_) / self.sd_)
        self.explained_variance_ratio_ = self.pca_.explained_variance_ratio_
        return self

    def features(self, subjects, z_sem: np.ndarray) -> pd.DataFrame:
        z = np.asarray(z_sem, dtype=np.float64)
        check_rows("latent PCA baseline", len(z), list(subjects))
        scores = self.pca_.transform((z - self.mean_) / self.sd_)
        table = pd.DataFrame(scores, columns=[f"pca_{k + 1}" for k in range(scores.shape[1])])
        table.insert(0, "subject", [str(s) for s in subjects])
        return table


class BrainAgeBaseline:
    """`fit(z_sem, age, groups)` on everyone given (only controls train); `features` → `brain_age_gap`."""

    def __init__(self, folds: int = 5, alphas=tuple(np.logspace(-2, 4, 25)), seed: int = 0, min_controls: int = 6):
        self.folds, self.alphas, self.seed, self.min_controls = int(folds), tuple(alphas), int(seed), int(min_controls)

    def fit_features(self, subjects, z_sem: np.ndarray, age, groups) -> pd.DataFrame:
        from sklearn.linear_model import RidgeCV
        from sklearn.model_selection import KFold

        z = np.asarray(z_sem, dtype=np.float64)
        age = np.asarray(age, dtype=np.float64)
        subjects = [str(s) for s in subjects]
        check_rows("brain-age baseline", len(z), subjects, age, list(groups))
        controls = control_mask(groups)
        check_controls("the brain-age baseline", controls, self.min_controls)
        folds = min(self.folds, int(controls.sum()))
        mean, sd = _standardiser(z[controls])
        x = (z - mean) / sd
        control_index = np.flatnonzero(controls)
        predicted = np.zeros(len(z))
        others = np.flatnonzero(~controls)
        splitter = KFold(folds, shuffle=True, random_state=self.seed)
        for train, test in splitter.split(control_index):
            model = RidgeCV(alphas=self.alphas).fit(x[control_index[train]], age[control_index[train]])
            predicted[control_index[test]] = model.predict(x[control_index[test]])
            if others.size:
                predicted[others] += model.predict(x[others]) / folds
        gap = predicted - age
        # bias correction fitted on the controls' out-of-fold gaps only
        slope, intercept = np.polyfit(age[controls], gap[controls], 1)
        corrected = gap - (slope * age + intercept)
        if not np.isfinite(corrected).all():
            raise BaselineUnavailable("the brain-age baseline produced non-finite predictions")
        control_error = predicted[controls] - age[controls]
        self.control_mae_ = float(np.mean(np.abs(control_error)))
        self.control_r_ = float(np.corrcoef(predicted[controls], age[controls])[0, 1]) if controls.sum() > 2 else float("nan")
        self.bias_slope_, self.bias_intercept_ = float(slope), float(intercept)
        return pd.DataFrame({"subject": subjects, "brain_age": predicted, "brain_age_gap": corrected})
