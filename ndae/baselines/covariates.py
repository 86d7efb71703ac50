"""Baseline 1: clinical covariates only — age, sex, onset (when the manifest has it), site."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ndae.data.sex import sex_female
from ndae.errors import NdaeError

# Bulbar onset carries the worse prognosis; anything else (limb, spinal, ...) is the reference.
_BULBAR = ("bulbar",)


def covariate_features(rows: pd.DataFrame, min_site_size: int = 1) -> tuple[pd.DataFrame, list[str]]:
    """One row per input row: `subject`, `age`, `sex_female`, `onset_bulbar` (only when the rows
    have an `onset` column), and one `site_<name>` indicator per site but the largest (only with
    two or more sites; sites with fewer than `min_site_size` rows are pooled into the reference).

    Returns the table and the feature columns that vary (a constant column cannot enter a Cox
    model and is left out of the list, though kept in the table).
    """
    for column in ("subject", "age", "sex", "site"):
        if column not in rows.columns:
            raise NdaeError(f"covariate baseline: missing column {column!r}")
    table = pd.DataFrame({"subject": rows["subject"].astype(str).to_numpy()})
    table["age"] = pd.to_numeric(rows["age"], errors="coerce").to_numpy(float)
    sex = sex_female(rows["sex"])
    if np.isnan(sex).any() or np.isnan(table["age"]).any():
        raise NdaeError("covariate baseline: age must be numeric and sex M/F for every row")
    table["sex_female"] = sex
    if "onset" in rows.columns:
        onset = rows["onset"].astype(str).str.strip().str.lower()
        table["onset_bulbar"] = onset.isin(_BULBAR).astype(float).to_numpy()
    sites = rows["site"].astype(str).to_numpy()
    counts = pd.Series(sites).value_counts()
    kept = [s for s in counts.index[1:] if counts[s] >= min_site_size]  # largest site: reference
    for site in sorted(kept):
        table[f"site_{_safe(site)}"] = (sites == site).astype(float)
    features = [c for c in table.columns if c != "subject" and table[c].nunique() > 1]
    return table, features


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)
