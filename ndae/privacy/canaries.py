"""Canaries for one-run privacy auditing (Steinke, Nasr & Jagielski, NeurIPS 2023): making them
and keeping the site's secret record of them.

A site that audits a run adds `count` synthetic canary images to its training controls; each is
included independently with probability 1/2, decided by a seed only the site knows. After the run
the auditor scores the canaries with the trained DAE and bounds epsilon from the guesses
(`ndae.privacy.canary_audit`).

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
