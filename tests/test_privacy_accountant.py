"""SiteAccountant: composition across reopenings, budget refusal without writing."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from ndae.errors import PrivacyBudgetExceeded
from ndae.privacy.accountant import PrivacyEvent, SiteAccountant, epsilon_of
from ndae.privacy.ledger import verify_ledger

DELTA = 1e-5


def _round(**details):
    return PrivacyEvent.dp_sgd(noise_multiplier=1.2, sample_rate=0.1, steps=20, max_grad_norm=1.0,
                               records_touched=40, **details)


def test_epsilon_composes_across_reopenings(tmp_path):
    account = SiteAccountant.open(tmp_path, "site-a")
    assert account.epsilon(DELTA) == 0.0
    first = account.spend_if_within(10.0, DELTA, _round(round=1))
    moments = PrivacyEvent.gaussian(sigma=4.0, sensitivity=2.0, records_touched=40)
    account.spend_if_within(10.0, DELTA, moments)
    reopened = SiteAccountant.open(tmp_path, "site-a")  # a new run, a new process
    second = reopened.spend_if_within(10.0, DELTA, _round(round=2))
    assert reopened.history == [(1.2, 0.1, 20), (2.0, 1.0, 1), (1.2, 0.1, 20)]
    reference = RDPAccountant()
    for noise_multiplier, sample_rate, steps in reopened.history:
        for _ in range(steps):
            reference.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    assert second["epsilon_spent_so_far"] == pytest.approx(reference.get_epsilon(DELTA), rel=1e-9)
    assert second["epsilon_spent_so_far"] > first["epsilon_spent_so_far"]
    assert reopened.epsilon(DELTA) == pytest.approx(second["epsilon_spent_so_far"])


def test_budget_exceeded_writes_nothing(tmp_path):
    account = SiteAccountant.open(tmp_path, "site-a")
    account.spend_if_within(3.0, DELTA, _round())
    before = account.path.read_bytes()
    spent = account.epsilon(DELTA)
    with pytest.raises(PrivacyBudgetExceeded, match=r"site 'site-a'.*epsilon to \d+\.\d+.*budget epsilon 3"):
        account.spend_if_within(3.0, DELTA, PrivacyEvent.dp_sgd(
            noise_multiplier=0.6, sample_rate=0.5, steps=200, max_grad_norm=1.0, records_touched=40))
    assert account.path.read_bytes() == before
    assert account.epsilon(DELTA) == spent
    verify_ledger(account.path)


def test_noise_free_release_is_unbounded(tmp_path):
    account = SiteAccountant.open(tmp_path, "site-a")
    scores = PrivacyEvent("shared-scores", 0.0, 1.0, 1, 1.0, 40)
    with pytest.raises(PrivacyBudgetExceeded, match="inf"):
        account.spend_if_within(100.0, DELTA, scores)
    assert not account.path.exists()


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_increases_with_steps(accountant):
    values = [epsilon_of([(1.0, 0.05, steps)], DELTA, accountant) for steps in (1, 10, 100, 400)]
    assert all(np.diff(values) > 0), values


def test_gaussian_release_matches_the_analytic_gaussian_mechanism():
    # One Gaussian release, sigma/sensitivity = 2: Balle & Wang (2018) exact epsilon is 1.993.
    event = PrivacyEvent.gaussian(sigma=6.0, sensitivity=3.0, records_touched=10)
    assert event.step == (2.0, 1.0, 1)
    assert epsilon_of([event.step], DELTA, "prv") == pytest.approx(1.993, abs=0.02)
    assert 1.993 < epsilon_of([event.step], DELTA, "rdp") < 1.2 * 1.993
