"""Gaussian diffusion: noise schedule, ε-prediction loss, DDIM sampling and inversion.

Independent of the network, as in diffae (phizaz/diffae): every function takes `epsilon_fn(x_t, t)`,
a callable that predicts the noise, so the same code serves the 2-D and 3-D networks, the EMA
copy, and a conditioning closure over `z_sem`.

DDIM grid: S timesteps t_0 = 0 < ... < t_{S-1} = T-1 evenly spread, plus a level "-1" with
ᾱ = 1 that is the clean image. Sampling walks S-1 → -1 (S network evaluations). Inversion follows
Diff-AE's `ddim_reverse_sample_loop` (phizaz/diffae, diffusion/base.py): the clean image is taken as
the level-0 state (t = 0, ᾱ_0 = 1 − β_0) and each step evaluates ε at the *current* level's
timestep before moving up, so it walks 0 → S-1 in S-1 evaluations.

x̂₀ clipping (Diff-AE's `clip_denoised=True`, on by default, both directions): x̂₀ predicted from ε
is clamped to the data range [-1, 1] and ε is then *recomputed* from the clamped x̂₀
(`_predict_eps_from_xstart`) before the DDIM update. With the linear schedule ᾱ_999 = 4e-5, an ε
error is multiplied by up to 1/√ᾱ ≈ 157 in x̂₀: clamping x̂₀ but keeping the network's ε (what this
module did before) still carries that error into the next state, and not clipping the inversion
let it grow along the walk, which ruined the round trip at few steps (benchmarks/results/roundtrip.md).
Clipping makes the round trip inexact for a network whose x̂₀ leaves [-1, 1], which is why the
exact-inverse property holds only with `clip=False` (kept for that check).
"""

from __future__ import annotations

from typing import Callable

import torch

EpsilonFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def linear_beta_schedule(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


class GaussianDiffusion:
    """Holds ᾱ_t (float64 on CPU; cast on use) and nothing learnable."""

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 loss_weight_cap: float | None = None):
        self.timesteps = int(timesteps)
        self.betas = linear_beta_schedule(timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.loss_weight_cap = loss_weight_cap

    @classmethod
    def from_config(cls, config) -> "GaussianDiffusion":
        return cls(config.timesteps, config.beta_start, config.beta_end, config.loss_weight_cap)

    def _alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(like.device)[t.long()].to(torch.float32)
        return a.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε."""
        a = self._alpha_bar(t, x_start)
        return a.sqrt() * x_start + (1.0 - a).sqrt() * noise

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.randint(0, self.timesteps, (batch_size,), generator=generator).to(device)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """min(1/ᾱ_t, cap) per sample, or ones without a cap."""
        if self.loss_weight_cap is None:
            return torch.ones(t.shape[0], device=t.device)
        a = self.alphas_cumprod.to(t.device)[t.long()].to(torch.float32)
        return torch.clamp(1.0 / a, max=float(self.loss_weight_cap))

    def per_sample_loss(self, epsilon_pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Weighted mean squared ε error per sample (shape [batch]): what DP-SGD clips per sample."""
        mse = (epsilon_pred.float() - noise.float()).pow(2).flatten(1).mean(1)
        return mse * self.loss_weights(t)

    # ---- DDIM ---------------------------------------------------------------------------------
    def ddim_timesteps(self, steps: int) -> list[int]:
        """S timesteps evenly spread over [0, T-1]. (A grid denser at low noise, DDIM's "quad",
        inverted worse here, docs/dae.md: the error comes from the high-noise steps.)"""
        steps = max(1, min(int(steps), self.timesteps))
        return sorted(set(torch.linspace(0, self.timesteps - 1, steps).round().long().tolist()))

    def _level_alpha(self, grid: list[int], level: int) -> float:
        return 1.0 if level < 0 else float(self.alphas_cumprod[grid[level]])

    @staticmethod
    def _x0_and_epsilon(x: torch.Tensor, epsilon: torch.Tensor, a: float,
                        clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x̂₀ of the state x at level ᾱ = a; with `clip`, x̂₀ clamped to [-1, 1] and ε recomputed
        from it (Diff-AE's p_mean_variance + _predict_eps_from_xstart). At ᾱ = 1 x̂₀ is x itself."""
        if a >= 1.0:
            return x, epsilon
        x0 = (x - (1.0 - a) ** 0.5 * epsilon) / a ** 0.5
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            epsilon = (x - a ** 0.5 * x0) / (1.0 - a) ** 0.5
        return x0, epsilon

    @classmethod
    def _step(cls, x: torch.Tensor, epsilon: torch.Tensor, a_from: float, a_to: float, clip: bool) -> torch.Tensor:
        """One deterministic DDIM (η = 0) move of x from level ᾱ = a_from to ᾱ = a_to."""
        x0, epsilon = cls._x0_and_epsilon(x, epsilon, a_from, clip)
        return a_to ** 0.5 * x0 + (1.0 - a_to) ** 0.5 * epsilon

    def predict_x0(self, epsilon_fn: EpsilonFn, x_t: torch.Tensor, t: int, clip: bool = True) -> torch.Tensor:
        """The network's denoised estimate x̂₀ of a state x_t at timestep t (one evaluation)."""
        epsilon = epsilon_fn(x_t, self._t(t, x_t)).float()
        return self._x0_and_epsilon(x_t.float(), epsilon, float(self.alphas_cumprod[int(t)]), clip)[0]

    def _t(self, value: int, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), value, dtype=torch.long, device=x.device)

    @torch.no_grad()
    def ddim_sample(self, epsilon_fn: EpsilonFn, x_T: torch.Tensor, steps: int = 50,
                    clip_denoised: bool = True) -> torch.Tensor:
        """Deterministic DDIM (η = 0) from x_T (level S-1) to x_0."""
        grid = self.ddim_timesteps(steps)
        x = x_T.float()
        for level in range(len(grid) - 1, -1, -1):
            epsilon = epsilon_fn(x, self._t(grid[level], x)).float()
            x = self._step(x, epsilon, self._level_alpha(grid, level), self._level_alpha(grid, level - 1),
                           clip_denoised)
        return x

    @torch.no_grad()
    def ddim_invert(self, epsilon_fn: EpsilonFn, x_start: torch.Tensor, steps: int = 50,
                    clip_denoised: bool = True) -> torch.Tensor:
        """Deterministic DDIM inversion x_0 → x_T (the stochastic code of Diff-AE), as Diff-AE's
        `ddim_reverse_sample`: x_0 is the level-0 state, ε is evaluated at the current level."""
        grid = self.ddim_timesteps(steps)
        x = x_start.float()
        for level in range(len(grid) - 1):
            epsilon = epsilon_fn(x, self._t(grid[level], x)).float()
            x = self._step(x, epsilon, self._level_alpha(grid, level), self._level_alpha(grid, level + 1),
                           clip_denoised)
        return x
