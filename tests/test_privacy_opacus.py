"""DP-SGD rounds on a small GroupNorm conv net keep composing through the persisted history."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ndae.errors import NdaeError
from ndae.privacy.accountant import SiteAccountant, epsilon_of
from ndae.privacy.opacus_training import make_private

DELTA = 1e-5


def _net():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.SiLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2),
    )


def _loader(seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(32, 1, 8, 8, generator=generator)
    labels = (images.mean(dim=(1, 2, 3)) > 0).long()
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def _train_epochs(private, epochs=1):
    for _ in range(epochs):
        for images, labels in private.data_loader:
            private.optimizer.zero_grad()
            loss = private.criterion(private.module(images), labels)
            loss.backward()
            private.optimizer.step()


def _round(history, mode="hooks", epochs=1, seed=0):
    torch.manual_seed(seed)
    model = _net()
    private = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), noise_multiplier=1.1,
        max_grad_norm=1.0, mode=mode, accountant_history=history,
        noise_generator=torch.Generator().manual_seed(seed),
    )
    _train_epochs(private, epochs)
    return private


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ghost"])
def test_one_round_runs(mode):
    private = _round([], mode=mode)
    assert private.steps_this_round == 4  # 1 / sample_rate Poisson batches
    assert all(torch.isfinite(p).all() for p in private.module.parameters())
    assert private.epsilon(DELTA) > 0


def test_persisted_history_composes_like_one_engine(tmp_path):
    account = SiteAccountant.open(tmp_path, "site-a")
    first = _round(account.history)
    account.spend_if_within(50.0, DELTA, first.round_event(round=1))
    eps_one = account.epsilon(DELTA)

    account = SiteAccountant.open(tmp_path, "site-a")  # next round: fresh process, fresh engine
    second = _round(account.history, seed=1)
    assert second.history_before == [(1.1, 0.25, 4)]
    account.spend_if_within(50.0, DELTA, second.round_event(round=2))
    eps_two = account.epsilon(DELTA)

    both = _round([], epochs=2)  # one engine running both rounds
    assert eps_two > eps_one
    assert eps_two == pytest.approx(both.epsilon(DELTA), rel=1e-12)
    assert second.epsilon(DELTA) == pytest.approx(eps_two, rel=1e-12)  # the engine agrees too
    assert eps_one == pytest.approx(first.epsilon(DELTA), rel=1e-12)


def test_target_epsilon_counts_the_budget_already_spent():
    history = [(2.0, 0.25, 8)]
    model = _net()
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(),
                           target_epsilon=8.0, target_delta=DELTA, epochs=2, max_grad_norm=1.0,
                           accountant_history=history)
    total = epsilon_of(history + [(private.noise_multiplier, 0.25, 8)], DELTA)
    assert 7.9 <= total <= 8.0


def test_batchnorm_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(NdaeError, match="GroupNorm"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(),
                     noise_multiplier=1.0, max_grad_norm=1.0)
