"""One-run canary audit: the bound's statistics, the canaries, and their record at the site."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ndae.errors import NdaeError
from ndae.privacy.canaries import CanarySet, canary_record_path, make_canaries, read_canary_record, site_canaries
from ndae.privacy.canary_audit import epsilon_lower_bound_one_run, one_run_audit, p_value_dp_audit


def test_p_value_is_the_binomial_tail_without_delta():
    from scipy import stats

    # eps = 0: a guess is a fair coin, so P[>= 15 of 20] is the Binomial(20, 1/2) tail
    assert p_value_dp_audit(100, 20, 15, 0.0, 0.0) == pytest.approx(stats.binom.sf(14, 20, 0.5))
    # larger eps makes many correct guesses likelier; delta only adds
    assert p_value_dp_audit(100, 20, 15, 2.0, 0.0) > p_value_dp_audit(100, 20, 15, 1.0, 0.0)
    assert p_value_dp_audit(100, 20, 15, 1.0, 1e-3) > p_value_dp_audit(100, 20, 15, 1.0, 0.0)


def test_perfect_guesses_bound_epsilon_and_the_bound_is_the_largest_rejected():
    alpha = 0.05
    bound = epsilon_lower_bound_one_run(64, 64, 64, 0.0, alpha)
    # all 64 right: q^64 = alpha at the bound, q = e^eps / (1 + e^eps)
    assert bound == pytest.approx(math.log(alpha ** (1 / 64) / (1 - alpha ** (1 / 64))), abs=1e-6)
    assert p_value_dp_audit(64, 64, 64, bound * 0.999, 0.0) <= alpha < p_value_dp_audit(64, 64, 64, bound * 1.01, 0.0)
    assert epsilon_lower_bound_one_run(64, 64, 32, 1e-5, alpha) == 0.0  # chance level certifies nothing
    assert epsilon_lower_bound_one_run(64, 64, 64, 1e-5, alpha) < bound  # delta loosens it


def test_one_run_audit_finds_separated_scores_and_not_random_ones():
    rng = np.random.default_rng(0)
    included = rng.random(200) < 0.5
    separated = one_run_audit(np.where(included, 1.0, 0.0) + 0.01 * rng.standard_normal(200), included, 1e-5)
    assert separated["epsilon_lower_bound"] > 2.0 and separated["auc"] == 1.0
    bounds = [one_run_audit(rng.standard_normal(200), included, 1e-5)["epsilon_lower_bound"] for _ in range(40)]
    assert np.mean(np.array(bounds) > 0) <= 0.15  # a valid 95 % bound: rarely positive for a blind attack
    with pytest.raises(NdaeError, match="one score per canary"):
        one_run_audit(np.zeros(3), np.zeros(4, bool), 1e-5)
    with pytest.raises(NdaeError, match="finite"):
        one_run_audit(np.array([0.0, np.nan]), np.array([True, False]), 1e-5)


def test_canaries_are_seeded_mirror_symmetric_and_in_range():
    a, b = make_canaries(5, (2, 96, 80), 7), make_canaries(5, (2, 96, 80), 7)
    assert a.shape == (5, 2, 96, 80) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, make_canaries(5, (2, 96, 80), 8))
    assert np.array_equal(a, a[..., ::-1])  # the flip augmentation shows the same image
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.4
    assert not np.allclose(a[0], a[1])


def test_canary_record_is_drawn_once_from_the_site_secret_private_and_reused(tmp_path):
    import os
    import secrets

    draws = []

    def draw():
        draws.append(secrets.randbits(63))
        return draws[-1]

    canaries = site_canaries(tmp_path, "site1", 16, (2, 96, 80), (30.0, 70.0), draw)
    again = site_canaries(tmp_path, "site1", 16, (2, 96, 80), (30.0, 70.0), draw)  # a later round
    assert len(draws) == 1 and again == canaries and canaries.seed == draws[0]
    path = canary_record_path(tmp_path, "site1")
    assert os.stat(path).st_mode & 0o077 == 0  # the seed decides the audit: only the site reads it
    other = site_canaries(tmp_path / "b", "site1", 16, (2, 96, 80), (30.0, 70.0), lambda: secrets.randbits(63))
    assert other.seed != canaries.seed and not np.array_equal(other.included(), canaries.included())
    saved = read_canary_record(path)
    assert saved == canaries and np.array_equal(saved.included(), canaries.included())
    images, ages = canaries.training_images()
    assert len(images) == len(ages) == canaries.included().sum() and 30 <= ages.min() <= ages.max() <= 70
    with pytest.raises(NdaeError, match="canaries are 16 of shape"):
        site_canaries(tmp_path, "site1", 32, (2, 96, 80), (30.0, 70.0), draw)
    canary_record_path(tmp_path, "site2").write_text("{not json")
    with pytest.raises(NdaeError, match="site2.canaries.json: corrupt"):
        read_canary_record(canary_record_path(tmp_path, "site2"))
