"""Fast unit tests of the diffusion autoencoder (micro configs, random data): a few seconds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ndae.diffusion import GaussianDiffusion
from ndae.errors import NdaeError
from ndae.model import (
    EMA, DAEConfig, DiffusionAutoencoder, batch_iterator, build_model, decode, encode, get_weights, interpolate,
    invert, load_checkpoint, make_optimizer, prepare_images, preset, save_checkpoint, set_seed, set_weights,
    train_steps,
)


def micro_config(spatial_dims: int = 2, age_conditioned: bool = False) -> DAEConfig:
    config = preset("tiny")
    size = (16, 16) if spatial_dims == 2 else (8, 8, 8)
    config.model = dataclasses.replace(
        config.model, spatial_dims=spatial_dims, in_channels=2 if spatial_dims == 2 else 1, image_size=size,
        base_channels=8, channel_mult=(1, 2), attention_levels=(1,), num_groups=4, z_sem_dim=8,
        encoder_base_channels=8, encoder_channel_mult=(1, 2), age_conditioned=age_conditioned,
    )
    config.train = dataclasses.replace(config.train, batch_size=4)
    return config


def random_images(config: DAEConfig, n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, config.model.in_channels, *config.model.image_size), generator=g) * 2 - 1


def test_presets_round_trip_and_build():
    for name in ("tiny", "paper", "paper3d"):
        config = preset(name)
        assert DAEConfig.from_dict(config.to_dict()) == config
    assert preset("paper").model.z_sem_dim == 512
    with pytest.raises(NdaeError, match="unknown DAE config preset"):
        preset("huge")
    with pytest.raises(NdaeError, match="unknown fields"):
        DAEConfig.from_dict({"model": {"colour": 1}})


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_forward_shapes_2d_and_3d(spatial_dims):
    config = micro_config(spatial_dims)
    model = build_model(config, seed=0)
    x = random_images(config, 3)
    t = torch.tensor([0, 500, 999])
    assert model(x, t, x).shape == x.shape
    assert encode(model, x).shape == (3, config.model.z_sem_dim)
    kind = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
    assert any(isinstance(m, kind) for m in model.modules())


def test_prepare_images_resizes_and_checks_channels():
    config = micro_config()
    x = np.full((2, 2, 96, 80), -1.0, np.float32)
    x[:, :, 30:60, 20:60] = 0.5
    y = prepare_images(x, config)
    assert y.shape == (2, 2, 16, 16) and y.min() >= -1 and y.max() <= 1
    with pytest.raises(NdaeError, match="channels"):
        prepare_images(np.zeros((2, 3, 96, 80), np.float32), config)


def test_opacus_validates_and_a_dp_sgd_step_runs():
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(build_model(micro_config(3), seed=0), strict=False) == []
    for name in ("tiny", "paper"):
        assert ModuleValidator.validate(build_model(preset(name), seed=0), strict=False) == []
    config = micro_config()
    model = build_model(config, seed=0)
    assert ModuleValidator.validate(model, strict=False) == []
    ema = EMA(model)
    optimizer = make_optimizer(model, config)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(random_images(config, 16)), batch_size=4)
    # The project's one DP training path: make_private + dp_epochs (what a site runs).
    from ndae.privacy.dp_sgd_loop import DenoisingCriterion, dp_epochs
    from ndae.privacy.opacus_training import make_private

    private = make_private(model, optimizer, loader, max_grad_norm=1.0, noise_multiplier=1.0,
                           criterion=DenoisingCriterion(model.diffusion),
                           noise_generator=torch.Generator().manual_seed(1),
                           sampling_generator=torch.Generator().manual_seed(2))
    before = [p.detach().clone() for p in model.parameters()]
    losses = dp_epochs(private, ema, 1, torch.Generator().manual_seed(0), torch.Generator().manual_seed(3),
                       False, torch.device("cpu"))
    assert len(losses) >= 1 and all(np.isfinite(losses))
    # Every parameter (encoder included) got a per-sample gradient and moved.
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert all(changed), f"{changed.count(False)} parameters did not change"
    assert private.epsilon(1e-5) > 0


def test_training_is_deterministic_under_a_seed():
    config = micro_config()

    def run():
        generator = set_seed(3)
        model = build_model(config, seed=3)
        optimizer = make_optimizer(model, config)
        batches = batch_iterator(random_images(config), None, 4, generator)
        return train_steps(model, EMA(model), optimizer, batches, 3, generator=generator), get_weights(model)

    (losses_a, weights_a), (losses_b, weights_b) = run(), run()
    assert losses_a == losses_b
    assert all(np.array_equal(a, b) for a, b in zip(weights_a, weights_b))


def test_checkpoint_round_trip_is_bit_identical_and_resumes(tmp_path):
    config = micro_config(age_conditioned=True)
    generator = set_seed(0)
    model = build_model(config, seed=0)
    ema = EMA(model, decay=0.9, warmup=2)
    optimizer = make_optimizer(model, config)
    x, ages = random_images(config), torch.linspace(20, 80, 8)
    batches = batch_iterator(x, ages, 4, generator)
    train_steps(model, ema, optimizer, batches, 2, generator=generator)
    save_checkpoint(tmp_path / "dae" / "checkpoint.pt", model, ema, optimizer, step=2)
    loaded = load_checkpoint(tmp_path / "dae" / "checkpoint.pt")
    assert loaded.step == 2 and loaded.config == config and loaded.ema.step == ema.step

    t = torch.tensor([10, 400, 900, 999] * 2)
    model.eval(), loaded.model.eval()
    assert torch.equal(model(x, t, x, age=ages), loaded.model(x, t, x, age=ages))
    assert torch.equal(ema.model(x, t, x, age=ages), loaded.ema.model(x, t, x, age=ages))
    # Resume: the same next steps from the original and the reloaded state.
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    l1 = train_steps(model, ema, optimizer, [(x[:4], ages[:4])], 2, generator=g1)
    l2 = train_steps(loaded.model, loaded.ema, loaded.optimizer, [(x[:4], ages[:4])], 2, generator=g2)
    assert l1 == l2
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(ema.model), get_weights(loaded.ema.model)))


def test_load_checkpoint_rejects_other_files(tmp_path):
    with pytest.raises(NdaeError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(NdaeError, match="not an ndae DAE checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_weights_as_numpy_for_fedavg():
    config = micro_config()
    a, b = build_model(config, seed=0), build_model(config, seed=1)
    wa, wb = get_weights(a), get_weights(b)
    assert all(isinstance(w, np.ndarray) for w in wa)
    average = [(x + y) / 2 for x, y in zip(wa, wb)]
    set_weights(a, average)
    assert all(np.array_equal(x, y) for x, y in zip(get_weights(a), average))
    with pytest.raises(NdaeError, match="arrays"):
        set_weights(a, average[:-1])


def test_age_conditioned_model_needs_ages():
    config = micro_config(age_conditioned=True)
    model = build_model(config, seed=0)
    x = random_images(config, 2)
    with pytest.raises(ValueError, match="age"):
        model(x, torch.tensor([1, 2]), x)
    out_young = model.unet.age_mlp(torch.tensor([[-1.5]]))
    assert out_young.shape[-1] == model.unet.time_dim


def test_ddim_takes_any_epsilon_function_and_inversion_undoes_sampling():
    # With a constant ε (here 0) the inversion's approximation ε(x_{i-1}, t_i) ≈ ε(x_i, t_i) is
    # exact, so decoding the inverted code must give the input back to float precision.
    diffusion = GaussianDiffusion(timesteps=1000, loss_weight_cap=10.0)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    epsilon_fn = lambda x, t: 0.0 * x  # noqa: E731  (ε ≡ 0: x̂_0 = x / sqrt(ᾱ))
    # Without clipping (x̂_0 = x / sqrt(ᾱ) leaves [-1, 1] at once) the walk is exactly invertible.
    x_T = diffusion.ddim_invert(epsilon_fn, x0, steps=50, clip_denoised=False)
    assert x_T.abs().max() < 0.01  # ᾱ_999 ≈ 4e-5: the code of a noise-free model is nearly zero
    assert torch.allclose(diffusion.ddim_sample(epsilon_fn, x_T, steps=50, clip_denoised=False), x0, atol=1e-4)
    assert diffusion.ddim_timesteps(50)[0] == 0 and diffusion.ddim_timesteps(50)[-1] == 999
    w = diffusion.loss_weights(torch.tensor([0, 999]))
    assert w[0] == pytest.approx(1.0, abs=1e-3) and w[1] == pytest.approx(10.0)


def test_invert_decode_and_interpolate_shapes():
    config = micro_config()
    model = build_model(config, seed=0)
    x = random_images(config, 3)
    z = encode(model, x)
    x_T = invert(model, x, z, steps=5)
    assert x_T.shape == x.shape
    assert decode(model, z, x_T, steps=5).shape == x.shape
    path = interpolate(model, z[0], z[1], x_T[0], x_T[1], alphas=(0.0, 0.5, 1.0), steps=5)
    assert path.shape == (3, *x.shape[1:])
    assert torch.allclose(path[0], decode(model, z[:1], x_T[:1], steps=5)[0], atol=1e-5)
