"""Canaries for one-run privacy auditing (Steinke, Nasr & Jagielski, NeurIPS 2023).

A site that audits a run adds `count` synthetic canary images to its training controls; each is
included independently with probability 1/2, decided by a seed only the site knows. After the run
the site scores every canary with the trained DAE (lower denoising loss = more likely trained
on), guesses "in" for the k best-scored and "out" for the k worst, and counts the correct
guesses. Under (ε, δ)-DP the number of correct guesses is stochastically dominated by a
Binomial(r, e^ε / (1 + e^ε)) up to a δ term (their Theorem 3.1 and Algorithm 2), so the largest ε
not rejected at level alpha is a valid lower bound on the ε of the whole training run — from ONE
training run, unlike shadow-model audits.

Canaries are blocky uniform noise (4×4-pixel blocks, left–right mirror-symmetric so the flip
augmentation shows the model the same image) in the data's [-1, 1] range: far from any brain, so
a model that memorises shows it, and synthetic, so the audit needs no patient data. They are
records like any other: under DP-SGD they are clipped and noised like the controls, and the
accounting (sample rate) counts them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ndae.errors import NdaeError

BLOCK = 4  # pixels per block on the 96×80 slice grid (2 on the tiny grid): memorised more than 8, 2 not at all


@dataclass(frozen=True)
class CanarySet:
    """Everything needed to rebuild a site's canaries and their secret inclusion."""

    site: str
    count: int
    seed: int
    shape: tuple[int, ...]  # one canary image, as the site's prepared slices: (C, H, W)
    age_range: tuple[float, float]  # canaries' ages (age-conditioned DAE), uniform in the controls' range

    def images(self) -> np.ndarray:
        return make_canaries(self.count, self.shape, self.seed)

    def included(self) -> np.ndarray:
        """The secret: which canaries the site trained on (independent fair coins)."""
        return np.random.default_rng([self.seed, 1]).random(self.count) < 0.5

    def ages(self) -> np.ndarray:
        low, high = self.age_range
        return np.random.default_rng([self.seed, 2]).uniform(low, high, self.count).astype(np.float32)

    def training_images(self) -> tuple[np.ndarray, np.ndarray]:
        """(images, ages) of the included canaries, the ones added to the site's training data."""
        keep = self.included()
        return self.images()[keep], self.ages()[keep]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "age_range": list(self.age_range),
                "kind": "blocky uniform noise, mirror-symmetric", "block": BLOCK}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "canary record") -> "CanarySet":
        try:
            return cls(site=str(data["site"]), count=int(data["count"]), seed=int(data["seed"]),
                       shape=tuple(int(s) for s in data["shape"]),
                       age_range=(float(data["age_range"][0]), float(data["age_range"][1])))
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise NdaeError(f"{where}: not a canary record ({error!r})") from error


def make_canaries(count: int, shape: Sequence[int], seed: int) -> np.ndarray:
    """`count` canary images of `shape` (C, H, W), float32 in [-1, 1]."""
    if count < 0:
        raise NdaeError(f"canary count must be >= 0, got {count}")
    channels, height, width = (int(s) for s in shape)
    rng = np.random.default_rng([seed, 0])
    blocks_h, blocks_w = math.ceil(height / BLOCK), math.ceil(math.ceil(width / 2) / BLOCK)
    half = rng.uniform(-1.0, 1.0, (count, channels, blocks_h, blocks_w)).astype(np.float32)
    half = half.repeat(BLOCK, axis=2).repeat(BLOCK, axis=3)[:, :, :height, :math.ceil(width / 2)]
    full = np.concatenate([half, half[..., ::-1]], axis=3)[..., :width]
    return np.ascontiguousarray(full)


def canary_record_path(privacy_dir: str | os.PathLike, site: str) -> Path:
    return Path(privacy_dir) / f"{site}.canaries.json"


def site_canaries(privacy_dir: str | os.PathLike, site: str, count: int, shape: Sequence[int],
                  age_range: tuple[float, float], draw_seed) -> CanarySet:
    """The site's canaries: the ones in its record when it has one (later rounds, resumed and
    later runs train on the same canaries), else new ones from `draw_seed()` (the site's CSPRNG),
    recorded once with mode 0600. The seed never leaves the site: whoever knows it knows which
    canaries were included, and could fake the audit."""
    from ndae.io import atomic_write_json

    path = canary_record_path(privacy_dir, site)
    wanted = dict(site=site, count=int(count), shape=tuple(int(s) for s in shape),
                  age_range=(float(age_range[0]), float(age_range[1])))
    if path.exists():
        saved = read_canary_record(path)
        if (saved.site, saved.count, saved.shape) != (site, wanted["count"], wanted["shape"]):
            raise NdaeError(f"{path}: this site's canaries are {saved.count} of shape {saved.shape}, the run asks for "
                            f"{count} of shape {tuple(shape)}; audit the earlier run, then move the record away")
        return saved
    canaries = CanarySet(seed=int(draw_seed()), **wanted)
    atomic_write_json(path, canaries.to_dict(), private=True)
    return canaries


def read_canary_record(path: str | os.PathLike) -> CanarySet:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NdaeError(f"{path}: no canary record (was the run trained with audit-canaries > 0?)") from None
    except json.JSONDecodeError as error:
        raise NdaeError(f"{path}: corrupt canary record ({error})") from error
    return CanarySet.from_dict(data, str(path))


# ---- the one-run bound ----------------------------------------------------------------------
def p_value_dp_audit(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[>= v correct of r guesses] under (epsilon, delta)-DP with m canaries (Steinke et al.
    2023, Algorithm 2): the randomised-response binomial tail plus the delta term."""
    from scipy import stats

    if not 0 <= v <= r <= m:
        raise NdaeError(f"one-run audit needs 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))
    if v == 0 or delta == 0:
        return min(1.0, beta)
    # Algorithm 2's loop keeps the running maximum over i of P[v - i <= Binomial(r, q) < v] / i
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[= v-1], P[= v-2], ..., P[= 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound_one_run(m: int, r: int, v: int, delta: float, alpha: float) -> float:
    """The largest epsilon the observed (r guesses, v correct) rejects at level alpha; 0 if none."""
    if r == 0 or p_value_dp_audit(m, r, v, 0.0, delta) > alpha:
        return 0.0
    low, high = 0.0, 50.0
    if p_value_dp_audit(m, r, v, high, delta) <= alpha:
        return high
    for _ in range(60):
        mid = (low + high) / 2
        if p_value_dp_audit(m, r, v, mid, delta) <= alpha:
            low = mid
        else:
            high = mid
    return low


def one_run_audit(scores, included, delta: float, alpha: float = 0.05,
                  guess_fractions: Sequence[float] = (0.125, 0.25, 0.5, 1.0)) -> dict[str, Any]:
    """Steinke et al.'s one-run audit from canary scores (higher = more likely included).

    For each fraction f the auditor guesses "in" for the top f·m/2 scores and "out" for the bottom
    f·m/2; several fractions are tried with a Bonferroni split of alpha, so picking the best one
    keeps the (1 − alpha) confidence. Returns the bound and the guesses behind it."""
    scores = np.asarray(scores, np.float64).ravel()
    included = np.asarray(included, bool).ravel()
    m = scores.size
    if m == 0 or included.size != m:
        raise NdaeError(f"one-run audit needs one score per canary: {m} scores, {included.size} inclusion flags")
    if not np.all(np.isfinite(scores)):
        raise NdaeError("one-run audit: canary scores must be finite")
    order = np.argsort(-scores, kind="stable")
    level = alpha / len(guess_fractions)
    best: dict[str, Any] = {"epsilon_lower_bound": 0.0, "guesses": 0, "correct": 0}
    tried = []
    for fraction in guess_fractions:
        k = max(1, int(round(fraction * m / 2)))
        k = min(k, m // 2)
        top, bottom = order[:k], order[m - k:]
        correct = int(included[top].sum() + (~included[bottom]).sum())
        bound = epsilon_lower_bound_one_run(m, 2 * k, correct, delta, level)
        tried.append({"guesses": 2 * k, "correct": correct, "epsilon_lower_bound": bound})
        if bound > best["epsilon_lower_bound"] or best["guesses"] == 0:
            best = {"epsilon_lower_bound": bound, "guesses": 2 * k, "correct": correct}
    from ndae.privacy.audit import attack_auc

    auc = attack_auc(scores[included], scores[~included]) if 0 < included.sum() < m else float("nan")
    return {**best, "canaries": m, "included": int(included.sum()), "delta": delta, "alpha": alpha,
            "tried": tried, "auc": auc,
            "method": "one-run audit (Steinke, Nasr & Jagielski 2023), Bonferroni over guess counts"}
