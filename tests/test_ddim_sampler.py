"""The DDIM sampler follows Diff-AE (phizaz/diffae diffusion/base.py).

- The rule, by hand: x̂₀ = (x − √(1−ᾱ) ε)/√ᾱ is clamped to [-1, 1] and ε is recomputed from the
  clamped x̂₀, ε' = (x − √ᾱ x̂₀)/√(1−ᾱ), before the move x' = √ᾱ' x̂₀ + √(1−ᾱ') ε', in decoding
  and in inversion. Checked on a two-level schedule (ᾱ = 0.9, 0.45) with a constant ε that pushes
  x̂₀ out of range; the old rule (clamp, keep the network's ε) and no clipping give other numbers.
- Inversion evaluates ε at the current level's timestep: 0, t_1, ..., t_{S-2} (S-1 calls), decoding
  at t_{S-1}, ..., 0 (S calls).
- Round trip on a trained `tiny` DAE: in tests/test_dae_training.py (it shares that module's
  training run, the protocol of benchmarks/bench_roundtrip.py with seed 0).
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.bench_roundtrip import old_decode, old_invert
from ndae.diffusion.gaussian import GaussianDiffusion

A0, A1 = 0.9, 0.45  # ᾱ of the two-level schedule: β = (0.1, 0.5)


def _two_level() -> GaussianDiffusion:
    diffusion = GaussianDiffusion(timesteps=2, beta_start=0.1, beta_end=0.5)
    assert diffusion.alphas_cumprod.tolist() == pytest.approx([A0, A1], abs=1e-12)
    assert diffusion.ddim_timesteps(2) == [0, 1]
    return diffusion


def _recording(values: dict[int, float], calls: list):
    """ε(x, t) = values[t] everywhere; records (t, x) of every call."""
    def epsilon_fn(x, t):
        assert (t == t[0]).all()
        calls.append((int(t[0]), x.clone()))
        return torch.full_like(x, values[int(t[0])])
    return epsilon_fn


def test_decoding_clamps_x0_and_recomputes_epsilon_by_hand():
    diffusion = _two_level()
    x_T = torch.full((1, 1, 1, 1), 0.5)
    eps = {1: -2.0, 0: 0.0}
    # Level 1 (ᾱ = 0.45) → level 0 (ᾱ = 0.9), by hand:
    x0_raw = (0.5 - math.sqrt(1 - A1) * -2.0) / math.sqrt(A1)  # 2.956: out of range
    assert x0_raw > 1
    eps_new = (0.5 - math.sqrt(A1) * 1.0) / math.sqrt(1 - A1)  # -0.2303, not the network's -2
    x_level0 = math.sqrt(A0) * 1.0 + math.sqrt(1 - A0) * eps_new  # 0.8759
    # Level 0 → clean (ᾱ = 1) with ε = 0: x̂₀ = x / √0.9 (in range, so no clamp).
    expected = x_level0 / math.sqrt(A0)  # 0.9232
    calls: list = []
    out = diffusion.ddim_sample(_recording(eps, calls), x_T, steps=2, clip_denoised=True)
    assert [t for t, _ in calls] == [1, 0]
    assert calls[1][1].item() == pytest.approx(x_level0, abs=1e-6)
    assert out.item() == pytest.approx(expected, abs=1e-6)

    # The old rule (clamp x̂₀, keep the network's ε) and no clipping give other answers.
    old_level0 = math.sqrt(A0) * 1.0 + math.sqrt(1 - A0) * -2.0  # 0.3162
    old = old_decode(diffusion, _recording(eps, []), x_T, 2, clip=True)
    assert old.item() == pytest.approx(old_level0 / math.sqrt(A0), abs=1e-6)  # 0.3333
    unclipped_level0 = math.sqrt(A0) * x0_raw + math.sqrt(1 - A0) * -2.0  # 2.172
    unclipped = diffusion.ddim_sample(_recording(eps, []), x_T, steps=2, clip_denoised=False)
    assert unclipped.item() == pytest.approx(unclipped_level0 / math.sqrt(A0), abs=1e-5)
    assert abs(old.item() - expected) > 0.5 and abs(unclipped.item() - expected) > 1.0


def test_inversion_clamps_x0_and_recomputes_epsilon_by_hand():
    diffusion = _two_level()
    x0 = torch.full((1, 1, 1, 1), 0.9)
    eps = {0: -1.0, 1: 123.0}  # ε at t = 1 must never be asked for: the walk ends at level 1
    x0_raw = (0.9 - math.sqrt(1 - A0) * -1.0) / math.sqrt(A0)  # 1.282: out of range
    assert x0_raw > 1
    eps_new = (0.9 - math.sqrt(A0) * 1.0) / math.sqrt(1 - A0)  # -0.1539
    expected = math.sqrt(A1) * 1.0 + math.sqrt(1 - A1) * eps_new  # 0.5566
    calls: list = []
    x_T = diffusion.ddim_invert(_recording(eps, calls), x0, steps=2, clip_denoised=True)
    assert [t for t, _ in calls] == [0] and torch.equal(calls[0][1], x0)
    assert x_T.item() == pytest.approx(expected, abs=1e-6)
    unclipped = diffusion.ddim_invert(_recording(eps, []), x0, steps=2, clip_denoised=False)
    assert unclipped.item() == pytest.approx(math.sqrt(A1) * x0_raw + math.sqrt(1 - A1) * -1.0, abs=1e-6)
    assert abs(unclipped.item() - expected) > 0.3


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_inversion_evaluates_epsilon_at_the_current_level(steps):
    diffusion = GaussianDiffusion(timesteps=1000)
    grid = diffusion.ddim_timesteps(steps)
    assert grid[0] == 0 and grid[-1] == 999 and len(grid) == steps
    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1

    calls: list = []

    def epsilon_fn(x, t):
        assert (t == t[0]).all()
        calls.append((int(t[0]), x.clone()))
        return 0.1 * x

    x_T = diffusion.ddim_invert(epsilon_fn, x0, steps)
    # ε at t_0 = 0 on the clean image itself (the level-0 state), then at each state's own level;
    # the last level t_{S-1} = 999 is where the walk ends, not a timestep it evaluates.
    assert [t for t, _ in calls] == grid[:-1]
    assert torch.equal(calls[0][1], x0)
    calls.clear()
    diffusion.ddim_sample(epsilon_fn, x_T, steps)
    assert [t for t, _ in calls] == grid[::-1]
    assert torch.equal(calls[0][1], x_T)
    calls.clear()
    old_invert(diffusion, epsilon_fn, x0, steps)  # the old walk: ε at the next level's t
    assert [t for t, _ in calls] == grid


def test_a_config_stored_before_the_sampler_key_is_moved_to_the_diffae_rule():
    """Run directories saved before the sampler followed Diff-AE stored clip_denoised = False (then the default) and no
    `sampler` key; loading one must not silently decode with the old, broken walk."""
    from ndae.model.config import DAEConfig, preset

    old = preset("tiny").to_dict()
    old["diffusion"].pop("sampler")
    old["diffusion"]["clip_denoised"] = False
    assert DAEConfig.from_dict(old).diffusion.clip_denoised is True
    chosen = preset("tiny").to_dict()
    chosen["diffusion"]["clip_denoised"] = False  # a current config that asks for no clipping keeps it
    assert DAEConfig.from_dict(chosen).diffusion.clip_denoised is False
