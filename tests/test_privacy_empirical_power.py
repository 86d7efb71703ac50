"""Empirical privacy audits that can fail: sized so that a model that memorises is detected.

A lower bound on epsilon that is 0 whatever the model proves nothing. Each audit here is first
checked to be able to give a positive bound at its size (every guess right), then run on

- a NON-private micro DAE trained on the included canaries until it memorises them: the audit
  must give a bound clearly above THRESHOLD (if scoring, guessing or the bound were broken, e.g.
  always 0, this fails), and
- the same DAE trained with DP-SGD through the site's own loop (`make_private` +
  `dp_sgd_loop.dp_epochs`) at a small accounted epsilon: the same audit must stay at or below it.

Power calculation (delta = 1e-5, alpha = 0.05, the values computed by
`test_a_positive_bound_is_possible_at_these_sizes`):

- One-run audit (Steinke, Nasr & Jagielski 2023; `one_run_audit` tries k = m/16, m/8, m/4, m/2
  guesses per side with a Bonferroni split alpha/4). With every guess right the bound is, for
  r guesses out of m canaries: m = 12: 0.82 (r = 12, the most a 12-canary audit can ever give);
  m = 32: 1.92 (r = 32); m = 64: 1.15 (r = 16), 1.92 (r = 32), 2.64 (r = 64). So with M = 64
  canaries a memorising model that gets the 8 best and 8 worst scores right (r = 16) already
  gives 1.15 > THRESHOLD = 0.5, and a bound above 0.5 needs at least r = 16 guesses
  (r = 8 all right: 0.31).
- Membership test (`empirical_epsilon_lower_bound`, Clopper–Pearson, Bonferroni over 64
  thresholds and 8 one-sided intervals): perfectly separated groups of n members and n
  non-members give 0 for n = 8 (and for 5 vs 2: nothing is ever detectable), 0.25 for n = 16,
  1.10 for n = 32, 1.86 for n = 64. Here n = 32 vs 32 (included vs excluded canaries): the best
  possible bound is about 1.1, so the membership threshold is MEMBERSHIP_THRESHOLD = 0.25, and
  the attack's AUC must be above 0.8 too.

Model: the tiny preset shrunk to 3×16×16 images, 8 base channels, no attention, beta_end 0.005
(most of the schedule at the low noise where memorised detail shows; the audit scores at
t in [0.02, 0.2]·T, `CANARY_T_RANGE`). On the 48×40 tiny DAE memorisation takes thousands of
steps (benchmarks/RESULTS.md, "One-run canary audit": 150 epochs give a bound of 0.5–0.6);
this micro DAE, 600 Adam steps of 8 (≈ 150 passes over 32 canaries), gives 1.15–1.9 over seeds
1–3 in development runs. The DP model takes DP_EPOCHS epochs at accounted epsilon ≈ EPSILON:
fewer steps than the non-private one (DP-SGD steps cost twice as much); more steps under the
same epsilon would only mean more noise per step.

Measured (one CPU thread, seed 1): non-private one-run bound 1.915 (32/32 guesses right, AUC
0.989), membership bound 0.787; DP at accounted epsilon 0.991: one-run bound 0.037 (42/64 right,
AUC 0.66), membership bound 0. The non-private training (the two `slow` tests' fixture) takes
about 30 s on 2 shared cores, the DP one about 10 s.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ndae.model import build_model, make_optimizer, preset, train_steps
from ndae.model.training import batch_iterator
from ndae.privacy.attack import denoising_scores
from ndae.privacy.canaries import make_canaries
from ndae.privacy.canary_audit import CANARY_T_RANGE, epsilon_lower_bound_one_run, one_run_audit
from ndae.privacy.empirical import empirical_epsilon_lower_bound, membership_audit
from ndae.privacy.randomness import SiteRandomness

M = 64  # canaries
SHAPE = (3, 16, 16)
DELTA = 1e-5
ALPHA = 0.05
THRESHOLD = 0.5  # one-run bound the memorising model must exceed
MEMBERSHIP_THRESHOLD = 0.25
PLAIN_STEPS = 600
BATCH = 8
EPSILON = 1.0  # the DP model's target (accounted) epsilon
DP_EPOCHS = 8
DRAWS = 16
SEED = 1


def _config():
    config = preset("tiny")
    config.model = dataclasses.replace(
        config.model, spatial_dims=2, in_channels=SHAPE[0], image_size=SHAPE[1:], slice_channels=None,
        base_channels=8, channel_mult=(1, 2), attention_levels=(), num_groups=4, z_sem_dim=8,
        encoder_base_channels=8, encoder_channel_mult=(1, 2), age_conditioned=False)
    config.diffusion = dataclasses.replace(config.diffusion, beta_end=0.005)
    config.train = dataclasses.replace(config.train, learning_rate=3e-3, batch_size=BATCH)
    return config


@pytest.fixture(scope="module")
def canaries():
    images = make_canaries(M, SHAPE, seed=SEED)
    included = np.random.default_rng([SEED, 1]).random(M) < 0.5  # the audit's fair coins
    return images, included


def _audit(model, images, included):
    scores = denoising_scores(model, images, seed=0, draws=DRAWS, t_range=CANARY_T_RANGE)
    one_run = one_run_audit(scores, included, DELTA, alpha=ALPHA)
    membership = membership_audit(model, images[included], images[~included], delta=DELTA, seed=0, draws=DRAWS,
                                  alpha=ALPHA, t_range=CANARY_T_RANGE)
    one_run["scores"] = scores
    return one_run, membership


@pytest.fixture(scope="module")
def non_private(canaries):
    images, included = canaries
    config = _config()
    model = build_model(config, seed=SEED)
    generator = torch.Generator().manual_seed(SEED)
    batches = batch_iterator(torch.as_tensor(images[included]), None, BATCH, generator)
    losses = train_steps(model, None, make_optimizer(model, config), batches, PLAIN_STEPS, generator=generator,
                         amp=False)
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:10])  # it trained
    return _audit(model, images, included)


@pytest.fixture(scope="module")
def dp_trained(canaries):
    from ndae.privacy.dp_sgd_loop import DenoisingCriterion, dp_epochs
    from ndae.privacy.opacus_training import make_private

    images, included = canaries
    config = _config()
    model = build_model(config, seed=SEED)
    site = SiteRandomness(insecure_seed=SEED)  # reproducible test draws, through the site's own source
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.as_tensor(images[included])),
                                         batch_size=BATCH)
    private = make_private(model, make_optimizer(model, config), loader, max_grad_norm=1.0,
                           target_epsilon=EPSILON, target_delta=DELTA, epochs=DP_EPOCHS,
                           criterion=DenoisingCriterion(model.diffusion),
                           noise_generator=site.torch_generator("noise"),
                           sampling_generator=site.torch_generator("sampling"))
    dp_epochs(private, None, DP_EPOCHS, site.torch_generator("draws"), site.torch_generator("empty-batch noise"),
              flip=True, device="cpu")
    accounted = private.epsilon(DELTA)
    assert 0.9 * EPSILON <= accounted <= EPSILON
    assert private.steps_this_round == DP_EPOCHS * len(loader)
    return (*_audit(model, images, included), accounted)


def test_a_positive_bound_is_possible_at_these_sizes():
    level = ALPHA / 4  # one_run_audit's Bonferroni split over its four guess counts
    all_right = {r: epsilon_lower_bound_one_run(M, r, r, DELTA, level) for r in (8, 16, 32, 64)}
    assert all_right[8] < THRESHOLD < all_right[16]  # at least 16 guesses must be made (and right)
    assert all_right[16] == pytest.approx(1.15, abs=0.01) and all_right[64] == pytest.approx(2.64, abs=0.01)
    # the audit of tests/test_federation_privacy.py (12 canaries) can never exceed 0.82
    assert epsilon_lower_bound_one_run(12, 12, 12, DELTA, level) == pytest.approx(0.82, abs=0.01)
    separated = {n: empirical_epsilon_lower_bound(np.arange(n) + 100.0, np.arange(n, dtype=float), DELTA,
                                                  alpha=ALPHA)["epsilon_lower_bound"] for n in (8, 16, 32)}
    assert separated[8] == 0.0 and separated[32] > 1.0
    assert empirical_epsilon_lower_bound(np.arange(5) + 10.0, np.arange(2.0), DELTA)["epsilon_lower_bound"] == 0.0


@pytest.mark.slow
def test_one_run_audit_detects_a_dae_that_memorised_its_canaries(non_private):
    one_run, _ = non_private
    print(f"non-private one-run audit: {one_run['correct']}/{one_run['guesses']} right, "
          f"bound {one_run['epsilon_lower_bound']:.3f} (threshold {THRESHOLD}), AUC {one_run['auc']:.3f}")
    assert one_run["epsilon_lower_bound"] > THRESHOLD
    assert one_run["auc"] > 0.8


@pytest.mark.slow
def test_membership_audit_detects_the_memorising_dae(non_private):
    _, membership = non_private
    print(f"non-private membership audit: bound {membership['epsilon_lower_bound']:.3f} "
          f"(threshold {MEMBERSHIP_THRESHOLD}), AUC {membership['auc']:.3f}")
    assert membership["auc"] > 0.8
    assert membership["epsilon_lower_bound"] > MEMBERSHIP_THRESHOLD


def test_audits_of_dp_sgd_stay_below_the_accounted_epsilon(dp_trained):
    one_run, membership, accounted = dp_trained
    print(f"DP (accounted {accounted:.3f}): one-run {one_run['correct']}/{one_run['guesses']} right, bound "
          f"{one_run['epsilon_lower_bound']:.3f}, AUC {one_run['auc']:.3f}; membership bound "
          f"{membership['epsilon_lower_bound']:.3f}, AUC {membership['auc']:.3f}")
    assert one_run["epsilon_lower_bound"] <= accounted
    assert membership["epsilon_lower_bound"] <= accounted


@pytest.mark.slow
def test_the_bound_comes_from_the_secret_coins(non_private, canaries):
    """Negative control: the memorising model's scores against coins it was NOT trained with (an
    independent draw) say nothing about membership, so the bound is 0 (a positive one has
    probability at most alpha; at this seed it is 0), and against the flipped coins too."""
    one_run, _ = non_private
    _, included = canaries
    unrelated = np.random.default_rng([SEED, 99]).random(M) < 0.5
    assert one_run_audit(one_run["scores"], unrelated, DELTA, alpha=ALPHA)["epsilon_lower_bound"] == 0.0
    assert one_run_audit(one_run["scores"], ~included, DELTA, alpha=ALPHA)["epsilon_lower_bound"] == 0.0
