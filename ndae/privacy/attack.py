"""What both empirical privacy audits of a run's DAE share: the model attacked, the attack score,
its AUC, and the accounted epsilon a bound is held against.

The score is the NEGATIVE denoising loss (a model that memorised a record denoises it better) at
fixed, seeded timesteps and noise shared by every image, so every record is scored by exactly the
same draws. The membership test (`ndae.privacy.empirical`) scores training controls against
held-out ones; the one-run canary audit (`ndae.privacy.canary_audit`) scores the site's canaries.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ndae.errors import NdaeError


def denoising_scores(model, images, ages=None, *, seed: int = 0, draws: int = 8, batch_size: int = 32,
                     t_range: tuple[float, float] = (0.05, 0.6)) -> np.ndarray:
    """−(mean weighted ε-prediction error) per image over `draws` fixed (t, noise) draws.

    Draw k uses timestep t_k (evenly spaced over `t_range`, fractions of the schedule) and one
    noise image from a generator seeded by (seed, k), the same for every image scored."""
    import torch

    from ndae.model import prepare_images
    from ndae.model.dae import model_device, unwrap

    core = unwrap(model).eval()
    device = model_device(core)
    x = prepare_images(images, core.config)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0)
    diffusion = core.diffusion
    T = int(diffusion.timesteps)
    steps = np.linspace(t_range[0] * T, t_range[1] * T, draws).astype(int)
    age = None if ages is None else torch.as_tensor(np.asarray(ages, np.float32))
    total = torch.zeros(n)
    with torch.no_grad():
        for k, step in enumerate(steps):
            noise_one = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(seed * 1000 + k))
            for start in range(0, n, batch_size):
                xb = x[start:start + batch_size].to(device)
                b = xb.shape[0]
                t = torch.full((b,), int(step), dtype=torch.long, device=device)
                noise = noise_one.expand_as(xb).to(device)
                ab = None if age is None else age[start:start + batch_size].to(device)
                epsilon = core(diffusion.q_sample(xb, t, noise), t, xb, None, ab)
                total[start:start + b] += diffusion.per_sample_loss(epsilon, noise, t).float().cpu()
    return -(total / len(steps)).numpy().astype(np.float64)


def attack_auc(members, nonmembers) -> float:
    """P(score of a member > score of a non-member), ties half: the attack's ROC AUC."""
    members, nonmembers = np.asarray(members, np.float64).ravel(), np.asarray(nonmembers, np.float64).ravel()
    greater = (members[:, None] > nonmembers[None, :]).mean()
    ties = (members[:, None] == nonmembers[None, :]).mean()
    return float(greater + 0.5 * ties)


def global_model(run_dir: Path, weights: str):
    """The run's global DAE: its trained weights ("model") or their EMA ("ema")."""
    from ndae.model import load_checkpoint

    if weights not in ("model", "ema"):
        raise NdaeError(f"--weights must be 'model' or 'ema', got {weights!r}")
    saved = load_checkpoint(run_dir / "dae" / "checkpoint.pt")
    return saved.model if weights == "model" else saved.ema.model


def accounted_epsilon(run_dir: str | os.PathLike, site: str) -> tuple[float, float | None]:
    """(epsilon, delta) the site's ledger accounts in this run; (inf, None) without a ledger."""
    from ndae.privacy.accountant import epsilon_of
    from ndae.privacy.ledger import ACCOUNTED_MECHANISMS, ledger_path, read_ledger

    path = ledger_path(run_dir, site)
    if not path.exists():
        return math.inf, None
    entries = read_ledger(path)
    if not entries:
        return 0.0, None
    delta = float(entries[-1]["delta"])
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries
               if e["mechanism"] in ACCOUNTED_MECHANISMS]  # declared releases carry no epsilon
    return epsilon_of(history, delta, entries[-1]["accountant"]), delta


def against_accounted(result: dict[str, Any], epsilon: float) -> dict[str, Any]:
    """`result` (an audit's bound) with the accounted epsilon and whether the bound stays below it."""
    result.update(epsilon_accounted=epsilon, below_accounted=bool(result["epsilon_lower_bound"] <= epsilon))
    return result


def accounted_verdict(result: dict[str, Any]) -> str:
    """'vs accounted …: below' (or ABOVE) for an audit line."""
    accounted = result["epsilon_accounted"]
    return (f"vs accounted {'inf (no DP ledger)' if not math.isfinite(accounted) else f'{accounted:.3f}'}: "
            f"{'below' if result['below_accounted'] else 'ABOVE (accounting is wrong or the test is broken)'}")
