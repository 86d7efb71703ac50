"""Per-site privacy accounting that survives rounds and runs.

A site's epsilon is the composition of every release it ever made, so the accountant's state
is not kept in memory or in a checkpoint but rebuilt from the site's hash-chained ledger each
time: history = [(noise_multiplier, sample_rate, steps) for every ledger line]. DP-SGD rounds are
Poisson-subsampled Gaussian steps; a Gaussian release of sufficient statistics or scores is one
step with sample_rate = 1 and noise_multiplier = sigma / sensitivity, and composes in the same
accountant.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from opacus.accountants import create_accountant

from ndae.errors import NdaeError, PrivacyBudgetExceeded
from ndae.privacy.ledger import ACCOUNTED_MECHANISMS, MECHANISMS, append_entry, ledger_lock, ledger_path, read_ledger

History = list[tuple[float, float, int]]


@dataclass(frozen=True)
class PrivacyEvent:
    """One privacy-consuming release, before it is accounted and written to the ledger."""

    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip: float
    records_touched: int
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise NdaeError(f"privacy event mechanism {self.mechanism!r} is not one of {', '.join(MECHANISMS)}")
        if not (0 < self.sample_rate <= 1):
            raise NdaeError(f"privacy event sample_rate {self.sample_rate} must be in (0, 1]")
        if self.steps < 1:
            raise NdaeError(f"privacy event steps {self.steps} must be at least 1")
        if self.noise_multiplier < 0:
            raise NdaeError(f"privacy event noise_multiplier {self.noise_multiplier} must be >= 0")

    @classmethod
    def dp_sgd(cls, *, noise_multiplier: float, sample_rate: float, steps: int, max_grad_norm: float,
               records_touched: int, **details: Any) -> "PrivacyEvent":
        return cls("dp-sgd", noise_multiplier, sample_rate, steps, max_grad_norm, records_touched, details)

    @classmethod
    def gaussian(cls, *, sigma: float, sensitivity: float, records_touched: int,
                 mechanism: str = "gaussian-moments", **details: Any) -> "PrivacyEvent":
        """A Gaussian release: noise standard deviation `sigma` on a statistic of L2 `sensitivity`."""
        if sensitivity <= 0:
            raise NdaeError(f"Gaussian release sensitivity {sensitivity} must be > 0")
        return cls(mechanism, sigma / sensitivity, 1.0, 1, sensitivity, records_touched, details)

    @property
    def step(self) -> tuple[float, float, int]:
        return (float(self.noise_multiplier), float(self.sample_rate), int(self.steps))


def compact(history: Sequence[Sequence[float]]) -> History:
    """Merge consecutive identical (noise_multiplier, sample_rate) entries: same composition, and
    the PRV accountant's cost grows with the number of distinct entries."""
    merged: History = []
    for noise_multiplier, sample_rate, steps in history:
        if merged and merged[-1][0] == noise_multiplier and merged[-1][1] == sample_rate:
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + int(steps))
        else:
            merged.append((float(noise_multiplier), float(sample_rate), int(steps)))
    return merged


def epsilon_of(history: Sequence[Sequence[float]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of a composed history, with a fresh Opacus accountant of that kind."""
    return _epsilon(tuple(compact(history)), float(delta), accountant)


@functools.lru_cache(maxsize=256)  # pure function of its arguments; audits ask the same twice
def _epsilon(history: tuple, delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    if any(noise_multiplier <= 0 for noise_multiplier, _, _ in history):
        return math.inf  # a release without noise has no finite epsilon
    account = create_accountant(accountant)
    account.history = list(history)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # PRV with sample_rate = 1 evaluates log(1 - q) = -inf on purpose; it is handled there.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(account.get_epsilon(delta))


class SiteAccountant:
    """The privacy account of one site, backed by its ledger `privacy/<site>.jsonl`."""

    def __init__(self, ledger: str | os.PathLike, site: str, accountant: str = "rdp",
                 expected_final_hash: str | None = None) -> None:
        self.path = Path(ledger)
        self.site = site
        self.accountant = accountant
        create_accountant(accountant)  # fail early on an unknown kind
        self._load(expected_final_hash)

    @classmethod
    def open(cls, run_dir: str | os.PathLike, site: str, accountant: str = "rdp") -> "SiteAccountant":
        return cls(ledger_path(run_dir, site), site, accountant)

    def _load(self, expected_final_hash: str | None = None) -> None:
        self.entries = read_ledger(self.path, expected_final_hash)
        for number, entry in enumerate(self.entries, start=1):
            if entry["site"] != self.site:
                raise NdaeError(f"{self.path}, line {number}: site {entry['site']!r} is not {self.site!r}")

    @property
    def history(self) -> History:
        """[(noise_multiplier, sample_rate, steps)], one per DP release, in ledger order (declared
        non-DP releases — Cox terms, concordance counts, consented scores — carry no ε)."""
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self.entries
                if e["mechanism"] in ACCOUNTED_MECHANISMS]

    def state_dict(self) -> dict:
        """In Opacus' accountant format, to load into a fresh PrivacyEngine's accountant."""
        return {"history": compact(self.history), "mechanism": self.accountant}

    def epsilon(self, delta: float) -> float:
        return epsilon_of(self.history, delta, self.accountant)

    def epsilon_after(self, event: PrivacyEvent, delta: float) -> float:
        """Epsilon if `event` were released now (computed on a copy; nothing is written)."""
        return epsilon_of(self.history + [event.step], delta, self.accountant)

    def check_within(self, budget_epsilon: float, budget_delta: float, event: PrivacyEvent) -> float:
        """Raise PrivacyBudgetExceeded if `event` would take the site past its budget; return
        the epsilon after it. Use before training with the planned steps."""
        after = self.epsilon_after(event, budget_delta)
        if not after <= budget_epsilon:
            raise PrivacyBudgetExceeded(
                f"site {self.site!r}: releasing {event.mechanism} (noise_multiplier "
                f"{event.noise_multiplier:.4g}, sample_rate {event.sample_rate:.4g}, {event.steps} steps) "
                f"would bring epsilon to {after:.4f} at delta {budget_delta:g}, over the budget "
                f"epsilon {budget_epsilon:g} (spent so far {self.epsilon(budget_delta):.4f}; ledger {self.path})"
            )
        return after

    def spend_if_within(self, budget_epsilon: float, budget_delta: float, event: PrivacyEvent) -> dict:
        """Account `event` and append it to the ledger, or raise PrivacyBudgetExceeded and write
        nothing. Returns the ledger entry."""
        with ledger_lock(self.path):
            self._load()  # another process may have spent since we opened the ledger
            after = self.check_within(budget_epsilon, budget_delta, event)
            entry = append_entry(
                self.path,
                site=self.site,
                mechanism=event.mechanism,
                noise_multiplier=event.noise_multiplier,
                clip=event.clip,
                sample_rate=event.sample_rate,
                steps=event.steps,
                records_touched=event.records_touched,
                delta=budget_delta,
                epsilon_spent_so_far=after,
                accountant=self.accountant,
                details=event.details,
            )
            self.entries.append(entry)
        return entry
