"""Site-side privacy glue for a federated run: DP-SGD rounds, noised normative moments, budget.

Everything here runs AT THE SITE (inside the ClientApp handlers) and uses the site's own ledger:

- `SitePrivacy.for_site(config, node_config, site)`: the site's settings (run config, with the
  SuperNode's node config overriding `privacy-dir`, `allow-pooled-scores`, and tightening the
  budget: the stricter of the run's and the site's `budget-epsilon` / `budget-delta` wins) and its
  `SiteAccountant` (ledger `<privacy-dir>/<site>.jsonl`).
- `private_train_round`: one round of DP-SGD (Opacus `make_private`, Poisson sampling, the
  site's whole ledger history loaded into the engine's accountant). Before training the planned
  round is checked against the budget (`check_within`), afterwards it is appended to the ledger
  (`spend_if_within`) BEFORE the weights leave the site. Refusal raises PrivacyBudgetExceeded
  (site, epsilon after, budget): the server sees it as the site's error reply and drops the site
  for that round; nothing is written on refusal.
- `private_normative_statistics`: the controls' sufficient statistics after clipping, with
  Gaussian noise (`privatize_arrays`), accounted in the same ledger.

What is clipped for the moments: every control's design row x (intercept, age spline basis,
sex; ‖x‖ ≤ `moments-covariate-clip`) and every control's raw z_sem (‖z_sem‖ ≤
`moments-latent-clip`). z_sem is NOT standardised first: its mean and sd are data-dependent and
would themselves have to be released privately. The covariate range (`covariate_min/max`) is
replaced by the design's public `age_range`. The number of clipped rows is written to the ledger's
`details` (a count, no record).

`target-epsilon` (if > 0) is the epsilon the site should have spent at the end of this run's DAE
training AND its moments release, on top of what it had spent before this run (ledger lines of
earlier runs). The noise multiplier is solved for once from that (the same in every round).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ndae.errors import NdaeError, PrivacyBudgetExceeded

__all__ = ["SitePrivacy", "private_train_round", "private_normative_statistics", "DenoisingCriterion",
           "run_id", "PrivacyBudgetExceeded", "PooledScoresNotAllowed", "postprocess_noisy_stats", "ledger_reply"]

_TRUE = ("true", "1", "yes")


class PooledScoresNotAllowed(NdaeError):
    """A private run asked a site for pooled deviation scores that its policy does not allow."""


def run_id(config) -> str:
    """Identifies this run in ledger details (so a later run can tell its own lines apart)."""
    return hashlib.sha256(str(Path(config.run_dir).expanduser().resolve()).encode()).hexdigest()[:16]


def _as_bool(value: Any) -> bool:
    return str(value).strip().lower() in _TRUE if isinstance(value, str) else bool(value)


@dataclass
class SitePrivacy:
    """One site's privacy settings and account for this run."""

    site: str
    records: int  # the controls: the records DP-SGD and the moments protect
    privacy_dir: Path
    noise_multiplier: float
    max_grad_norm: float
    target_epsilon: float
    delta: float
    budget_epsilon: float
    budget_delta: float
    mode: str
    moments_noise_multiplier: float
    moments_covariate_clip: float
    moments_latent_clip: float
    allow_pooled_scores: bool
    run: str

    @classmethod
    def for_site(cls, config, node_config: Mapping[str, Any], site_name: str, n_controls: int) -> "SitePrivacy":
        privacy_dir = resolve_privacy_dir(config, node_config)
        delta = config.delta if config.delta > 0 else 1.0 / (10.0 * max(1, n_controls))
        budget_epsilon = config.budget_epsilon if config.budget_epsilon > 0 else math.inf
        budget_delta = config.budget_delta if config.budget_delta > 0 else delta
        if "budget-epsilon" in node_config:  # the site's own budget: the stricter one holds
            budget_epsilon = min(budget_epsilon, float(node_config["budget-epsilon"]))
        if "budget-delta" in node_config:
            budget_delta = min(budget_delta, float(node_config["budget-delta"]))
        allow = _as_bool(node_config.get("allow-pooled-scores", config.allow_pooled_scores))
        return cls(site=site_name, records=int(n_controls), privacy_dir=privacy_dir,
                   noise_multiplier=float(config.noise_multiplier), max_grad_norm=float(config.max_grad_norm),
                   target_epsilon=float(config.target_epsilon), delta=float(delta),
                   budget_epsilon=float(budget_epsilon), budget_delta=float(budget_delta), mode=config.dp_mode,
                   moments_noise_multiplier=float(config.moments_noise_multiplier),
                   moments_covariate_clip=float(config.moments_covariate_clip),
                   moments_latent_clip=float(config.moments_latent_clip), allow_pooled_scores=allow,
                   run=run_id(config))

    @property
    def ledger(self) -> Path:
        return self.privacy_dir / f"{self.site}.jsonl"

    def accountant(self):
        from ndae.privacy.accountant import SiteAccountant

        return SiteAccountant(self.ledger, self.site)

    def moments_event(self, latent_dim: int, design_columns: int):
        """The (planned) Gaussian release of the moments, for budgeting before training."""
        from ndae.privacy.accountant import PrivacyEvent
        from ndae.privacy.dp_moments import statistics_sensitivity

        sensitivity = statistics_sensitivity(("n", "xtx", "xty", "sum_y", "sum_y2", "yty"),
                                             self.moments_covariate_clip, self.moments_latent_clip)
        return PrivacyEvent("gaussian-moments", self.moments_noise_multiplier, 1.0, 1, sensitivity,
                            self.records, {"run": self.run})


def resolve_privacy_dir(config, node_config: Mapping[str, Any]) -> Path:
    """Where the site's ledger lives: node config `privacy-dir` (the site decides), else run
    config `privacy-dir`, else in simulation `run-dir/privacy/` (one file per site, where
    `ndae audit RUN` reads it), else `<folder of the site's manifest>/privacy/`."""
    if node_config.get("privacy-dir"):
        return Path(str(node_config["privacy-dir"])).expanduser()
    if config.privacy_dir:
        return Path(config.privacy_dir).expanduser()
    if "partition-id" in node_config:
        return Path(config.run_dir).expanduser() / "privacy"
    if node_config.get("manifest"):
        return Path(str(node_config["manifest"])).expanduser().resolve().parent / "privacy"
    raise NdaeError("no privacy-dir for this site: set node config privacy-dir='/path' or run config privacy-dir")


def site_canaries(config, node_config: Mapping[str, Any], site):
    """The site's canaries for a one-run audit (None unless run config audit-canaries > 0).

    The inclusion coin flips come from the site's node config `canary-secret` when set (then the
    server cannot know them); the record that lets the site audit later is written next to its
    ledger, once, and must match in every round."""
    if config.audit_canaries <= 0:
        return None
    from ndae.privacy.canaries import CanarySet, canary_seed, ensure_canary_record

    ages = np.asarray(site.data.ages, np.float64)[site.controls]
    canaries = CanarySet(site=site.name, count=int(config.audit_canaries),
                         seed=canary_seed(config.seed, site.name, str(node_config.get("canary-secret", ""))),
                         shape=tuple(int(s) for s in site.data.images.shape[1:]),
                         age_range=(float(ages.min()), float(ages.max())) if ages.size else (0.0, 0.0))
    ensure_canary_record(resolve_privacy_dir(config, node_config), canaries)
    return canaries


def ledger_reply(privacy: SitePrivacy) -> dict[str, Any]:
    """What the server learns about the site's ledger: head hash, length, epsilon, the ledger text
    (release metadata only, no record) so the run directory can keep an auditable copy."""
    from ndae.privacy.ledger import GENESIS_HASH, read_ledger

    entries = read_ledger(privacy.ledger)
    epsilon = privacy.accountant().epsilon(privacy.budget_delta) if entries else 0.0
    return {"privacy-site": privacy.site, "ledger-head": entries[-1]["hash"] if entries else GENESIS_HASH,
            "ledger-entries": len(entries), "epsilon": float(epsilon) if math.isfinite(epsilon) else -1.0,
            "delta": privacy.budget_delta, "budget-epsilon": privacy.budget_epsilon if math.isfinite(
                privacy.budget_epsilon) else -1.0,
            "ledger-path": str(privacy.ledger.resolve()),
            "ledger-text": privacy.ledger.read_text() if privacy.ledger.exists() else ""}


# ---- DP-SGD ------------------------------------------------------------------------------------
class DenoisingCriterion:
    """The Diff-AE loss as a criterion(ε̂, noise, t) with a `reduction` (what Opacus' ghost
    clipping needs: it switches reduction to "none" to get one loss per sample)."""

    def __init__(self, diffusion, reduction: str = "mean"):
        self.diffusion, self.reduction = diffusion, reduction

    def __call__(self, epsilon_pred, noise, t):
        per_sample = self.diffusion.per_sample_loss(epsilon_pred, noise, t)
        if self.reduction == "none":
            return per_sample
        return per_sample.sum() if self.reduction == "sum" else per_sample.mean()


def _planned_noise_multiplier(privacy: SitePrivacy, account, sample_rate: float, steps_per_round: int,
                              rounds: int, design_columns: int, latent_dim: int) -> float:
    """The DP-SGD noise multiplier: the configured one, or solved from target-epsilon so that the
    ledger before this run + `rounds` rounds + the moments release reach it."""
    from ndae.privacy.opacus_training import noise_multiplier_for_budget

    if privacy.target_epsilon <= 0:
        return privacy.noise_multiplier
    earlier = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in account.entries
               if e.get("details", {}).get("run") != privacy.run]
    planned = earlier + [privacy.moments_event(latent_dim, design_columns).step]
    try:
        return noise_multiplier_for_budget(privacy.target_epsilon, privacy.budget_delta, sample_rate,
                                           steps_per_round * rounds, planned)
    except NdaeError as error:
        raise PrivacyBudgetExceeded(
            f"site {privacy.site!r}: no DP-SGD noise reaches target-epsilon {privacy.target_epsilon:g} at delta "
            f"{privacy.budget_delta:g} after earlier runs and this run's moments release ({error}; ledger "
            f"{privacy.ledger})") from None


def private_train_round(site, weights, dae_config: dict, privacy: SitePrivacy, *, round_number: int, rounds: int,
                        epochs: int, seed: int, ema_step: int, device: str = "auto", canaries=None):
    """One DP-SGD round at the site: returns (weights record, metrics). Raises
    PrivacyBudgetExceeded (nothing written) if the round would take the site past its budget."""
    import torch

    from ndae.federation.records import dae_to_record
    from ndae.federation.site import resolve_device, site_seed, start_local_round
    from ndae.model import make_optimizer
    from ndae.privacy.opacus_training import make_private

    dev = resolve_device(device)
    model, ema, x, ages = start_local_round(site, weights, dae_config, ema_step, device, canaries)
    cfg, n = model.config, int(x.shape[0])
    tensors = [x]
    if ages is not None:
        tensors.append(torch.as_tensor(ages))
    batch = min(cfg.train.batch_size, n)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), batch_size=batch)
    local_seed = site_seed(seed, round_number, site.name)
    account = privacy.accountant()
    steps_per_round = epochs * len(loader)
    sigma = _planned_noise_multiplier(privacy, account, 1 / len(loader), steps_per_round, rounds,
                                      design_columns=0, latent_dim=cfg.model.z_sem_dim)
    torch.manual_seed(local_seed)  # Poisson sampling draws from the global generator
    private = make_private(model, make_optimizer(model, cfg), loader, max_grad_norm=privacy.max_grad_norm,
                           noise_multiplier=sigma, mode=privacy.mode, accountant_history=account.history,
                           criterion=DenoisingCriterion(model.diffusion),
                           noise_generator=torch.Generator().manual_seed(local_seed + 2))
    details = {"run": privacy.run, "round": round_number, "mode": privacy.mode}
    planned = private.planned_event(epochs, records_touched=n)
    after = account.check_within(privacy.budget_epsilon, privacy.budget_delta, planned)  # BEFORE any step
    generator = torch.Generator().manual_seed(local_seed)
    losses = _dp_epochs(private, ema, epochs, generator, cfg.train.flip_augment, dev)
    event = private.round_event(records_touched=n, **details)
    if event.steps != planned.steps:
        raise NdaeError(f"site {site.name!r}: DP-SGD took {event.steps} steps, {planned.steps} were budgeted")
    entry = account.spend_if_within(privacy.budget_epsilon, privacy.budget_delta, event)
    metrics = {"num-examples": n, "train-loss": float(np.mean(losses)) if losses else float("nan"),
               "local-steps": event.steps, "noise-multiplier": sigma, "epsilon": float(after),
               "ledger-entries": int(entry["index"]) + 1}
    return dae_to_record(private.module, ema), metrics, entry


def _dp_epochs(private, ema, epochs: int, generator, flip: bool, device) -> list[float]:
    """DP-SGD epochs over Poisson batches; every batch (empty ones too) is one accounted step."""
    import torch

    from ndae.model.training import unwrap

    module, optimizer, criterion = private.module, private.optimizer, private.criterion
    diffusion = unwrap(module).diffusion
    module.train()
    noise_generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    losses: list[float] = []
    for _ in range(epochs):
        for batch in private.data_loader:
            images = batch[0].to(device, torch.float32)
            ages = batch[1].to(device, torch.float32) if len(batch) > 1 else None
            b = images.shape[0]
            if flip and b:
                flips = torch.rand(b, generator=generator) < 0.5
                images = torch.where(flips.view(-1, *([1] * (images.dim() - 1))).to(device), images.flip(-1), images)
            t = diffusion.sample_timesteps(b, generator).to(device)
            noise = torch.randn(images.shape, generator=generator).to(device)
            optimizer.zero_grad(set_to_none=True)
            if b:
                x_t = diffusion.q_sample(images, t, noise)
                loss = criterion(module(x_t, t, images, None, ages), noise, t)
                loss.backward()
                losses.append(float(loss.detach()))
                optimizer.step()
            else:
                _noise_only_step(private, noise_generator)
            if ema is not None:
                ema.update(module)
    return losses


def _noise_only_step(private, generator) -> None:
    """An empty Poisson batch is still a DP-SGD step: the update is the Gaussian noise alone
    (what Opacus would add to a zero gradient sum), and it is accounted. Done by hand because the
    DAE's attention cannot run a forward pass on zero images."""
    import torch

    optimizer = private.optimizer
    std = optimizer.noise_multiplier * optimizer.max_grad_norm
    for parameter in optimizer.params:
        noise = torch.normal(0.0, std, parameter.shape, generator=generator)
        parameter.grad = (noise / optimizer.expected_batch_size).to(parameter.device, parameter.dtype)
    optimizer.original_optimizer.step()
    private.engine.accountant.step(noise_multiplier=optimizer.noise_multiplier, sample_rate=private.sample_rate)
    optimizer.zero_grad(set_to_none=True)


# ---- normative moments -------------------------------------------------------------------------
def private_normative_statistics(site, weights, dae_config: dict, design: dict, privacy: SitePrivacy,
                                 *, seed: int, device: str = "auto") -> tuple[dict, dict]:
    """Clipped, noised sufficient statistics of the controls (the payload the server sums) and
    the ledger entry of the release. Budget is checked before the statistics are computed."""
    from ndae.federation.site import covariates, encode_z_sem, site_seed
    from ndae.normative import DesignSpec, SufficientStats
    from ndae.privacy.dp_moments import clip_rows, privatize_arrays

    spec = DesignSpec.from_dict(design)
    rows = site.controls
    account = privacy.accountant()
    z_sem = encode_z_sem(site, weights, dae_config, rows, device)
    event = privacy.moments_event(z_sem.shape[1], spec.n_columns)
    account.check_within(privacy.budget_epsilon, privacy.budget_delta, event)
    frame = covariates(site, rows)
    X, covariate_rows_clipped = clip_rows(spec.build(frame), privacy.moments_covariate_clip)
    Y, latent_rows_clipped = clip_rows(z_sem, privacy.moments_latent_clip)
    exact = SufficientStats.from_data(frame, z_sem, spec, site_column="site")
    arrays = exact.to_arrays()
    arrays.update(n=np.asarray(float(len(X))), xtx=X.T @ X, xty=X.T @ Y, sum_y=Y.sum(0), sum_y2=(Y * Y).sum(0),
                  yty=Y.T @ Y, covariate_min=np.array([spec.age_range[0]]), covariate_max=np.array([spec.age_range[1]]))
    rng = np.random.default_rng(site_seed(seed, 10_000, site.name))
    noisy = privatize_arrays(arrays, covariate_clip=privacy.moments_covariate_clip,
                             latent_clip=privacy.moments_latent_clip, noise_multiplier=privacy.moments_noise_multiplier,
                             records=len(X), rng=rng,
                             public=("site_names", "design", "covariate_min", "covariate_max"))
    if abs(noisy.sensitivity - event.clip) > 1e-12 * event.clip:
        raise NdaeError(f"moments sensitivity {noisy.sensitivity} differs from the budgeted {event.clip}")
    entry = account.spend_if_within(privacy.budget_epsilon, privacy.budget_delta, noisy.event(
        run=privacy.run, covariate_rows_clipped=covariate_rows_clipped, latent_rows_clipped=latent_rows_clipped))
    return noisy.stats, entry


def postprocess_noisy_stats(stats):
    """Server-side post-processing of summed noisy statistics (free under DP): n at least the
    number of design columns + 2, XᵀX and YᵀY symmetric positive definite (eigenvalues floored),
    ΣY² at least (ΣY)²/n + a small margin so every variance stays positive."""
    from dataclasses import replace

    p = stats.xtx.shape[0]
    n = max(float(stats.n), p + 2.0)

    def psd(matrix, floor_fraction=1e-6):
        matrix = (matrix + matrix.T) / 2
        values, vectors = np.linalg.eigh(matrix)
        floor = floor_fraction * max(float(values.max()), 1e-6)
        if values.min() >= floor:
            return matrix  # already positive definite: left as it is
        return (vectors * np.maximum(values, floor)) @ vectors.T

    sum_y2 = np.maximum(stats.sum_y2, stats.sum_y ** 2 / n + 1e-6 * n)
    site_n = np.maximum(stats.site_n, 1.0)
    return replace(stats, n=n, xtx=psd(stats.xtx), sum_y2=sum_y2, site_n=site_n,
                   yty=None if stats.yty is None else psd(stats.yty))


def ledger_copy_target(run_dir: str | os.PathLike, site: str) -> Path:
    from ndae.privacy.ledger import ledger_path

    return ledger_path(run_dir, site)


# ---- server side: what the run directory keeps about each site's ledger -------------------------
def load_heads(run_dir: str | os.PathLike) -> dict[str, dict]:
    import json

    path = Path(run_dir) / "privacy" / "heads.json"
    return json.loads(path.read_text()) if path.exists() else {}


def record_site_ledger(run_dir: str | os.PathLike, heads: dict[str, dict], reply: Mapping[str, Any]) -> None:
    """Keep a site's reported ledger head in `heads` and `privacy/heads.json` (so `ndae audit RUN`
    detects a truncated ledger), and a verified copy of its ledger as `privacy/<site>.jsonl`
    unless the site writes that very file itself (simulation)."""
    from ndae.errors import LedgerError
    from ndae.io import atomic_write_text
    from ndae.privacy.ledger import verify_ledger, write_heads

    site = str(reply["privacy-site"])
    target = ledger_copy_target(run_dir, site)
    text = str(reply.get("ledger-text", ""))
    if Path(str(reply["ledger-path"])).resolve() != target.resolve():
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:  # verify the copy before it replaces ours
            probe = Path(scratch) / "ledger.jsonl"
            probe.write_text(text)
            if verify_ledger(probe, str(reply["ledger-head"])) != str(reply["ledger-head"]):
                raise LedgerError(f"site {site!r} sent a ledger that does not end in its reported head")
        atomic_write_text(target, text)
    epsilon = float(reply["epsilon"])
    budget = float(reply["budget-epsilon"])
    heads[site] = {"final_hash": str(reply["ledger-head"]), "entries": int(reply["ledger-entries"]),
                   "epsilon": epsilon if epsilon >= 0 else "inf", "delta": float(reply["delta"]),
                   "budget_epsilon": budget if budget >= 0 else "inf"}
    write_heads(run_dir, heads)
