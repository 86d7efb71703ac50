"""Configuration of the diffusion autoencoder: plain dataclasses, two presets.

`tiny` runs on one CPU thread (tests, demo); `paper` is the GPU configuration close to the NDAE
paper (Diff-AE with a 512-d `z_sem`). A config round-trips through `to_dict`/`from_dict`, which is
how it is stored in `config.json` and inside every checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ndae.errors import NdaeError


@dataclass
class ModelConfig:
    spatial_dims: int = 2  # 2: axial slices (or a slab) as channels; 3: Conv3d on the volume
    in_channels: int = 3  # number of slices stacked as channels (set from the data by `ndae train`)
    image_size: tuple[int, ...] = (48, 40)  # network input (H, W) or (D, H, W); data are resized
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)  # indices into channel_mult with self-attention
    num_groups: int = 8  # GroupNorm groups (GroupNorm only: Opacus-compatible)
    dropout: float = 0.0
    z_sem_dim: int = 64
    encoder_base_channels: int = 16
    encoder_channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    age_conditioned: bool = False  # add an age embedding that scales the decoder's features
    # Which of the prepared slices (channel indices) the DAE sees; None: all. Index 1 of the default
    # slice set (MNI z = 8, 20, 38, 56 mm) is the lateral-ventricle slice: alone, it gives the random
    # encoder fewer easy features, so the trained z_sem's age content shows (benchmarks/results/dae.md).
    slice_channels: tuple[int, ...] | None = None


@dataclass
class DiffusionConfig:
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # Per-sample ε-loss weight min(1/ᾱ_t, cap): emphasises high noise, where the decoder must
    # use z_sem, so the decoder relies on z_sem more (docs/dae.md). None: plain MSE.
    loss_weight_cap: float | None = 10.0
    sample_steps: int = 50  # DDIM steps for decoding and for inversion to x_T
    # Diff-AE's sampler: x̂₀ clamped to [-1, 1] and ε recomputed from it, in decoding and inversion
    # (ndae.diffusion.gaussian). False: the same walk unclipped (exactly invertible for a network whose
    # x̂₀ leaves [-1, 1], but a far worse round trip at few steps: benchmarks/results/roundtrip.md).
    clip_denoised: bool = True
    # Which DDIM rule the config was written under. Configs stored before the sampler followed
    # Diff-AE have no such key and stored clip_denoised = False only because it was the default
    # then: `from_dict` moves them to the Diff-AE rule, so an old run directory is not silently
    # decoded with the broken sampler.
    sampler: str = "diffae"


@dataclass
class TrainConfig:
    steps: int = 600
    batch_size: int = 8  # short CPU budgets: more steps beat bigger batches
    learning_rate: float = 1e-3  # high for short CPU runs: a lower rate round-trips worse at 200 steps (docs/dae.md)
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: int = 10  # decay_t = min(decay, (1 + t) / (warmup + t)): early EMA follows weights
    flip_augment: bool = True  # random left-right flips of training images
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10


@dataclass
class DAEConfig:
    name: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DAEConfig":
        try:
            parts = {}
            for f, klass in (("model", ModelConfig), ("diffusion", DiffusionConfig), ("train", TrainConfig)):
                values = dict(data.get(f, {}))
                if f == "diffusion" and values and "sampler" not in values:  # stored before the Diff-AE sampler
                    values.update(clip_denoised=True, sampler="diffae")
                known = {x.name for x in fields(klass)}
                unknown = set(values) - known
                if unknown:
                    raise NdaeError(f"DAE config section '{f}': unknown fields {sorted(unknown)}")
                for key, value in values.items():
                    if isinstance(value, list):
                        values[key] = tuple(value)
                parts[f] = klass(**values)
            return cls(name=data.get("name", "custom"), **parts)
        except TypeError as error:
            raise NdaeError(f"DAE config: {error}") from error

    def with_data_shape(self, in_channels: int) -> "DAEConfig":
        """Set `in_channels` from the data's channel count (after `slice_channels` selection)."""
        selected = self.model.slice_channels
        if selected is not None:
            bad = [c for c in selected if not 0 <= int(c) < int(in_channels)]
            if bad or not selected:
                raise NdaeError(f"DAE config model.slice_channels {tuple(selected)}: the data have "
                                f"{in_channels} slice channels (valid indices 0..{int(in_channels) - 1})")
            in_channels = len(selected)
        return replace(self, model=replace(self.model, in_channels=int(in_channels)))


def preset(name: str) -> DAEConfig:
    """`tiny` (CPU, one thread; 48×40 slices, ~1 M parameters), `tiny-ventricle`
    (`tiny` on the lateral-ventricle slice at 64×56, batch 16, 1000 steps), `paper` (GPU; native 96×80, 512-d z_sem)
    or `paper3d`."""
    if name == "tiny":
        return DAEConfig(name="tiny")
    if name == "tiny-age":
        # The paper's hierarchy on `tiny`: the decoder is told the age, so z_sem need not carry
        # what age explains and its deviations from the normative latent are more the disease's
        # (one of the DAE variants compared in benchmarks/results/directions/).
        return DAEConfig(name="tiny-age", model=ModelConfig(age_conditioned=True))
    if name == "tiny-native":
        # `tiny` on the four prepared slices at their native 2 mm (96×80) instead of ~4 mm: the
        # precentral cortex is 1-2 voxels thick at 2 mm and blurs away at 4 mm. Four times the
        # pixels, so several times the CPU time per step (docs/dae.md).
        return DAEConfig(name="tiny-native", model=ModelConfig(image_size=(96, 80)))
    if name == "tiny-ventricle":
        # `tiny` on the lateral-ventricle slice only (channel 1 of the default slice set), at 64×56
        # with batch 16, 1000 steps: after 300 steps the decoder hardly uses z_sem, after 1000 steps
        # it does, and by then the latent beats its own initial weights on the ventricle-area and
        # age probes (the measurements: docs/dae.md "What a CPU budget buys", benchmarks/results/dae.md).
        return DAEConfig(name="tiny-ventricle", model=ModelConfig(slice_channels=(1,), image_size=(64, 56)),
                         train=TrainConfig(steps=1000, batch_size=16))
    if name == "paper":
        return DAEConfig(
            name="paper",
            model=ModelConfig(
                image_size=(96, 80),
                base_channels=64,
                channel_mult=(1, 1, 2, 2, 4),
                num_res_blocks=2,
                attention_levels=(3, 4),
                num_groups=32,
                dropout=0.1,
                z_sem_dim=512,
                encoder_base_channels=64,
                encoder_channel_mult=(1, 1, 2, 2, 4, 4),
            ),
            diffusion=DiffusionConfig(sample_steps=100),
            train=TrainConfig(
                steps=50_000, batch_size=32, learning_rate=1e-4, ema_decay=0.9999,
                ema_warmup=10, checkpoint_every=2000, log_every=50,
            ),
        )
    if name == "paper3d":
        return DAEConfig(
            name="paper3d",
            model=ModelConfig(
                spatial_dims=3, in_channels=1, image_size=(80, 96, 80), base_channels=32,
                channel_mult=(1, 2, 2, 4), num_res_blocks=1, attention_levels=(), num_groups=16,
                z_sem_dim=512, encoder_base_channels=32, encoder_channel_mult=(1, 2, 2, 4, 4),
            ),
            diffusion=DiffusionConfig(sample_steps=100),
            train=TrainConfig(steps=50_000, batch_size=4, learning_rate=1e-4, ema_decay=0.9999),
        )
    raise NdaeError(f"unknown DAE config preset '{name}': choose {', '.join(PRESETS)}")


from ndae.presets import PRESETS  # noqa: E402  (one list, torch-free for the CLI help)
