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
    torch.manual_seed(seed)  # the model's initial weights only
    model = _net()
    private = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), noise_multiplier=1.1,
        max_grad_norm=1.0, mode=mode, accountant_history=history,
        noise_generator=torch.Generator().manual_seed(seed),
        sampling_generator=torch.Generator().manual_seed(seed + 1),
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


# ---- where the randomness of DP-SGD comes from ------------------------------------------------
def _batch_compositions(sampling_seed, epochs=3):
    """The indices of every Poisson batch of `epochs` epochs, with sampling drawn from a generator
    seeded `sampling_seed` (model and noise fixed)."""
    model = _net()
    images, labels = _loader().dataset.tensors
    indexed = DataLoader(TensorDataset(images, labels, torch.arange(len(labels))), batch_size=8)
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), indexed, noise_multiplier=1.1,
                           max_grad_norm=1.0, noise_generator=torch.Generator().manual_seed(0),
                           sampling_generator=torch.Generator().manual_seed(sampling_seed))
    return [tuple(batch[2].tolist()) for _ in range(epochs) for batch in private.data_loader]


def test_poisson_sampling_draws_from_the_sampling_generator():
    same_a, same_b, other = _batch_compositions(1), _batch_compositions(1), _batch_compositions(2)
    assert len(same_a) == 12  # 3 epochs × 1 / sample_rate batches
    assert same_a == same_b
    assert same_a != other
    # and not from the global generator: reseeding it changes nothing
    torch.manual_seed(12345)
    assert _batch_compositions(1) == same_a


def test_sample_rate_is_one_over_the_number_of_batches_as_opacus_samples():
    from ndae.privacy.opacus_training import poisson_sample_rate

    images = torch.randn(10, 1, 8, 8)
    loader = DataLoader(TensorDataset(images, torch.zeros(10, dtype=torch.long)), batch_size=4)
    model = _net()
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, noise_multiplier=1.0,
                           max_grad_norm=1.0)
    # q = 1/ceil(10/4) = 1/3, not batch/n = 0.4; Opacus' sampler uses the same q, and so does the ledger
    assert private.sample_rate == poisson_sample_rate(loader) == pytest.approx(1 / 3)
    assert private.data_loader.batch_sampler.sample_rate == pytest.approx(private.sample_rate)
    assert private.planned_event(epochs=2).sample_rate == pytest.approx(1 / 3)
    assert private.planned_event(epochs=2).steps == 6


def test_a_dp_sgd_round_leaves_the_global_generator_alone():
    model = _net()
    torch.manual_seed(7)
    before = torch.get_rng_state()
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), noise_multiplier=1.1,
                           max_grad_norm=1.0)  # generators left out: seeded from the OS CSPRNG
    _train_epochs(private, epochs=2)
    assert private.steps_this_round == 8
    assert torch.equal(torch.get_rng_state(), before)


def test_sampling_generator_needs_poisson_sampling():
    model = _net()
    with pytest.raises(NdaeError, match="Poisson"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), noise_multiplier=1.0,
                     max_grad_norm=1.0, poisson_sampling=False, sampling_generator=torch.Generator())


# ---- the one DP-SGD loop on the DAE -------------------------------------------------------------
def _micro_dae():
    import dataclasses

    from ndae.model import build_model, preset

    config = preset("tiny")
    config.model = dataclasses.replace(
        config.model, in_channels=2, image_size=(16, 16), base_channels=8, channel_mult=(1, 2),
        attention_levels=(1,), num_groups=4, z_sem_dim=8, encoder_base_channels=8, encoder_channel_mult=(1, 2),
        age_conditioned=False, slice_channels=None)
    return build_model(config, seed=0)


def test_dp_epochs_trains_the_dae_counts_every_batch_and_keeps_the_global_generator():
    from ndae.model import EMA
    from ndae.model.training import make_optimizer
    from ndae.privacy.dp_sgd_loop import DenoisingCriterion, dp_epochs

    model = _micro_dae()
    ema = EMA(model)
    images = torch.rand(6, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loader = DataLoader(TensorDataset(images), batch_size=2)
    before_weights = [p.detach().clone() for p in model.parameters()]
    before_rng = torch.get_rng_state()
    private = make_private(model, make_optimizer(model, model.config), loader, noise_multiplier=1.0,
                           max_grad_norm=1.0, criterion=DenoisingCriterion(model.diffusion),
                           noise_generator=torch.Generator().manual_seed(1),
                           sampling_generator=torch.Generator().manual_seed(2))
    losses = dp_epochs(private, ema, 2, torch.Generator().manual_seed(3), torch.Generator().manual_seed(4),
                       flip=True, device="cpu")
    assert private.steps_this_round == 2 * 3  # every Poisson batch, empty or not, is a step
    assert 0 < len(losses) <= 6 and all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(a, p) for a, p in zip(before_weights, model.parameters()))
    assert torch.equal(torch.get_rng_state(), before_rng)
    assert private.epsilon(DELTA) > 0


def test_train_steps_refuses_a_dp_optimizer():
    from ndae.model import train_steps
    from ndae.model.training import make_optimizer

    model = _micro_dae()
    loader = DataLoader(TensorDataset(torch.zeros(4, 2, 16, 16)), batch_size=2)
    private = make_private(model, make_optimizer(model, model.config), loader, noise_multiplier=1.0,
                           max_grad_norm=1.0)
    with pytest.raises(NdaeError, match="dp_sgd_loop"):
        train_steps(private.module, None, private.optimizer, private.data_loader, 1)


def test_every_dae_preset_passes_opacus_validation():
    from opacus.validators import ModuleValidator

    from ndae.model import build_model, preset

    assert ModuleValidator.validate(_micro_dae(), strict=False) == []
    for name in ("tiny", "paper"):
        assert ModuleValidator.validate(build_model(preset(name), seed=0), strict=False) == []
