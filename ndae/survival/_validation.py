"""Checks on survival tables, shared by every fitter: each error names the column at fault."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ndae.errors import NdaeError


def validate_survival_frame(
    df: pd.DataFrame,
    covariates: Sequence[str],
    duration_col: str = "time",
    event_col: str = "event",
    strata: Sequence[str] | None = None,
    where: str = "survival table",
    require_events: bool = True,
) -> None:
    """Raise NdaeError naming the column if `df` cannot be used for a Cox fit."""
    if not isinstance(df, pd.DataFrame):
        raise NdaeError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
    strata = list(strata or [])
    wanted = [duration_col, event_col, *covariates, *strata]
    missing = [column for column in wanted if column not in df.columns]
    if missing:
        raise NdaeError(
            f"{where}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"available: {', '.join(map(str, df.columns))}"
        )
    if len(covariates) == 0:
        raise NdaeError(f"{where}: no covariates given")
    if len(set(covariates)) != len(covariates):
        raise NdaeError(f"{where}: covariates listed twice: {sorted(_duplicates(covariates))}")
    for column in [duration_col, event_col, *covariates]:
        if not (pd.api.types.is_numeric_dtype(df[column]) or pd.api.types.is_bool_dtype(df[column])):
            raise NdaeError(f"{where}: column {column!r} must be numeric, found dtype {df[column].dtype}")
        values = df[column].to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            raise NdaeError(
                f"{where}: column {column!r} has {int(bad.sum())} NaN/infinite value(s) "
                f"(first at row {df.index[np.flatnonzero(bad)[0]]!r})"
            )
    for column in strata:
        if df[column].isna().any():
            raise NdaeError(f"{where}: strata column {column!r} has {int(df[column].isna().sum())} missing value(s)")
    time = df[duration_col].to_numpy(dtype=float)
    if (time < 0).any():
        first = df.index[np.flatnonzero(time < 0)[0]]
        raise NdaeError(
            f"{where}: column {duration_col!r} (time in months) has {int((time < 0).sum())} negative value(s) "
            f"(first at row {first!r})"
        )
    event = df[event_col].to_numpy(dtype=float)
    not_binary = ~np.isin(event, (0.0, 1.0))
    if not_binary.any():
        examples = sorted(set(event[not_binary].tolist()))[:5]
        raise NdaeError(f"{where}: column {event_col!r} must be 0 or 1, found {examples}")
    if require_events and event.sum() == 0:
        raise NdaeError(f"{where}: column {event_col!r} has no events (all 0): a Cox model cannot be fitted")


def _duplicates(items: Sequence[str]) -> set[str]:
    seen: set[str] = set()
    return {item for item in items if item in seen or seen.add(item)}
