"""The oracle C-index C*: how well the *true* risk (known only in simulation) ranks survival.

No fitted model can beat it in expectation, so it is the ceiling for every C-index we report on
a simulated cohort (e.g. `truth.csv`'s `risk` column against observed `time`/`event`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ndae.errors import NdaeError


def oracle_c_index(time: Sequence[float], event: Sequence[int], true_risk: Sequence[float]) -> float:
    """Harrell's C of the true risk: higher risk must mean shorter time.

    A pair (i, j) is comparable when the shorter time is an observed event; it is concordant when
    that subject has the higher risk; equal risks count one half (`harrell_c_index`).
    """
    from ndae.survival.metrics import harrell_c_index

    time, event, true_risk = (np.asarray(a, dtype=float) for a in (time, event, true_risk))
    if not (len(time) == len(event) == len(true_risk)):
        raise NdaeError(f"oracle C-index: time ({len(time)}), event ({len(event)}) and true_risk ({len(true_risk)}) differ in length")
    for name, values in (("time", time), ("event", event), ("true_risk", true_risk)):
        if not np.isfinite(values).all():
            raise NdaeError(f"oracle C-index: {name} has NaN/infinite values")
    if not np.isin(event, (0.0, 1.0)).all():
        raise NdaeError("oracle C-index: event must be 0 or 1")
    if event.sum() == 0:
        raise NdaeError("oracle C-index: no events, so no comparable pairs")
    return harrell_c_index(time, event, true_risk)
