"""Cross-validation folds grouped by source anatomy, stratified by event where possible.

A simulated cohort may draw several patients from one healthy scan (`truth.csv` column
`source_subject`). Such patients share their anatomy, so a model that has seen one of them in
training has partly seen the others: they must fall in the same fold, or the test C-index leaks.
Without the column every subject is its own group (plain stratified K-fold).

Folds are scikit-learn's `StratifiedGroupKFold` (shuffled, seeded: the same inputs and seed give
the same folds). When there are too few events or censored subjects to stratify, the folds are
grouped only (`GroupKFold` on shuffled group labels).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ndae.errors import NdaeError

GROUP_COLUMN = "source_subject"


class FoldError(NdaeError):
    """The data cannot be split into the folds asked for."""


def subject_groups(subjects, truth: pd.DataFrame | None = None, column: str = GROUP_COLUMN) -> np.ndarray:
    """The group label of each subject: its `truth[column]` (source anatomy) where the truth has
    that column, else the subject itself. Every subject must be in the truth when the column is."""
    subjects = pd.Series(np.asarray(subjects)).astype(str)
    if truth is None or column not in truth.columns:
        return subjects.to_numpy()
    if "subject" not in truth.columns:
        raise FoldError(f"truth table has a {column!r} column but no 'subject' column")
    lookup = truth.assign(subject=truth["subject"].astype(str)).drop_duplicates("subject").set_index("subject")[column]
    missing = sorted(set(subjects) - set(lookup.index))
    if missing:
        raise FoldError(f"truth table lacks {len(missing)} subject(s) to group by {column!r}: {missing[:10]}")
    groups = lookup.reindex(subjects).astype(object)
    blank = groups.isna() | (groups.astype(str).str.strip() == "")
    # a subject without a recorded source is its own group
    groups[blank.to_numpy()] = subjects[blank.to_numpy()].to_numpy()
    return groups.astype(str).to_numpy()


def grouped_folds(event, groups=None, folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Test indices (sorted) of `folds` folds that never split a group.

    `event`: 0/1 per subject (stratification label); `groups`: one label per subject (None:
    each subject alone). Deterministic given the inputs and `seed`."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    event = np.asarray(event).astype(int)
    n = len(event)
    groups = np.arange(n).astype(str) if groups is None else np.asarray(groups).astype(str)
    if len(groups) != n:
        raise FoldError(f"grouped folds: {len(groups)} group labels for {n} subjects")
    if folds < 2:
        raise FoldError(f"grouped folds: need at least 2 folds, got {folds}")
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise FoldError(f"grouped folds: {folds} folds need at least {folds} source anatomies, got {n_groups}")
    counts = np.bincount(event, minlength=2)
    if counts.min() >= folds:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(n), event, groups)
    else:
        # too few events (or censorings) to put one in every fold: group only, shuffled by seed
        names = np.unique(groups)
        relabel = dict(zip(names, np.random.default_rng(seed).permutation(len(names))))
        splits = GroupKFold(n_splits=folds).split(np.zeros(n), event, [relabel[g] for g in groups])
    out = [np.sort(test) for _, test in splits]
    check_grouped(out, groups)
    return out


def fold_labels(folds: list[np.ndarray], n: int) -> np.ndarray:
    """Fold number of each of the n subjects (every subject must be in exactly one fold)."""
    labels = np.full(n, -1)
    for k, test in enumerate(folds):
        if np.any(labels[test] >= 0):
            raise FoldError("folds overlap: a subject is in two test folds")
        labels[test] = k
    if np.any(labels < 0):
        raise FoldError(f"folds leave {int(np.sum(labels < 0))} subject(s) out")
    return labels


def check_grouped(folds: list[np.ndarray], groups) -> None:
    """Raise when the folds do not partition the subjects or split a group across folds."""
    groups = np.asarray(groups).astype(str)
    labels = fold_labels(folds, len(groups))
    per_group = pd.Series(labels).groupby(groups).nunique()
    split = per_group[per_group > 1]
    if len(split):
        raise FoldError(f"folds split {len(split)} group(s) across folds: {list(split.index[:10])}")
