"""The cohort's random streams: one generator per (seed, purpose[, index ...]).

Every draw of the generator comes from a stream named by what it is for, never from a shared
sequence, so the output depends neither on the order nor on the number of worker processes.
"""

from __future__ import annotations

import numpy as np

# Purposes (the second entry of each seed sequence).
CASE_MIX, PATIENTS, SURVIVAL, SUBJECT = 1, 2, 3, 4


def stream(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *purpose]))


def copy_stream(seed: int, purpose: int, *index: int, copy: int = 1) -> np.random.Generator:
    """The stream of one patient copy of an anatomy (`--patients-per-anatomy`).

    Copy 1 keeps the stream a one-patient-per-anatomy cohort has always used, so K = 1 is the
    cohort it always was and copy 1 of a K > 1 cohort is that cohort's patient; further copies
    get their own independent streams.
    """
    return stream(seed, purpose, *index) if copy == 1 else stream(seed, purpose, *index, copy)


def survival_stream(seed: int, copy: int = 1) -> np.random.Generator:
    """The stream the survival times of one copy's patients were drawn from (in source order)."""
    return copy_stream(seed, SURVIVAL, copy=copy)
