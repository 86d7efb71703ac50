"""Runs AT THE SITE: the two releases that spend a hospital's ε, under its policy and ledger.

- `private_train_round`: one round of DP-SGD (Opacus, Poisson sampling) over the site's
  controls. Every random draw comes from the site's CSPRNG (`ndae.privacy.randomness`), never
  from the run config's seed. The round is checked against the lifetime budget and the per-run
  cap before the first step and written to the ledger before the weights leave the site.
- `private_normative_statistics`: clipped, Gaussian-noised sufficient statistics of the
  controls' latents (`ndae.privacy.dp_moments`), accounted the same way.
- `private_prior_residual_statistics`: the same release for the controls' prior residual region
  means (`ndae.federation.site.prior_residuals`), with its own clip and noise multiplier.

`target-epsilon` (if > 0) is the ε this run's DAE training AND moments releases should reach, on
top of the site's earlier runs; the noise multiplier is solved once from it.
"""

from __future__ import annotations

import json

import numpy as np

from ndae.errors import NdaeError, PrivacyBudgetExceeded
from ndae.federation.site.privacy import ACCOUNTED, SitePrivacy

__all__ = ["private_train_round", "private_normative_statistics", "private_prior_residual_statistics"]


# ---- DP-SGD ------------------------------------------------------------------------------------
def _planned_noise_multiplier(privacy: SitePrivacy, account, sample_rate: float, steps_per_round: int,
                              rounds: int) -> float:
    """The DP-SGD noise multiplier: the configured one, or solved from target-epsilon so that the
    ledger before this run + `rounds` rounds + the moments release reach it."""
    from ndae.privacy.opacus_training import noise_multiplier_for_budget

    if privacy.target_epsilon <= 0:
        return privacy.noise_multiplier
    earlier = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in account.entries
               if e["mechanism"] in ACCOUNTED and e.get("details", {}).get("run") != privacy.run]
    planned = earlier + [event.step for event in privacy.planned_moments_events()]
    try:
        return noise_multiplier_for_budget(privacy.target_epsilon, privacy.budget_delta, sample_rate,
                                           steps_per_round * rounds, planned)
    except NdaeError as error:  # its text holds the ε already spent: the site's log only
        import logging

        logging.getLogger("ndae.site").warning("site %r: %s (ledger %s)", privacy.site, error, privacy.ledger)
        raise PrivacyBudgetExceeded(
            f"site {privacy.site!r}: no DP-SGD noise reaches target-epsilon {privacy.target_epsilon:g} at delta "
            f"{privacy.budget_delta:g} after earlier runs and this run's moments releases (details in the "
            "site's log)") from None


def private_train_round(site, weights, dae_config: dict, privacy: SitePrivacy, *, round_number: int, rounds: int,
                        epochs: int, ema_step: int, device: str = "auto", canaries=None):
    """One DP-SGD round at the site: returns (weights record, metrics, ledger entry). Raises
    PrivacyBudgetExceeded (nothing written) if the round would take the site past its budget."""
    import torch

    from ndae.federation.records import dae_to_record
    from ndae.federation.site.training import start_local_round
    from ndae.model import make_optimizer
    from ndae.model.run import resolve_device
    from ndae.privacy.dp_sgd_loop import DenoisingCriterion, dp_epochs
    from ndae.privacy.opacus_training import make_private, poisson_sample_rate

    privacy.check_round(privacy.accountant(), round_number, rounds)  # before anything is read
    dev = resolve_device(device)
    model, ema, x, ages = start_local_round(site, weights, dae_config, ema_step, device, canaries)
    cfg, n = model.config, int(x.shape[0])
    tensors = [x] if ages is None else [x, torch.as_tensor(ages)]
    # The batch sets the sample rate 1/ceil(n/B) that the ledger (sent to the server) records: the
    # site's floor keeps a server asking for B = 1 from reading n off it.
    batch = min(max(cfg.train.batch_size, privacy.policy.min_dp_batch_size), n)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), batch_size=batch)
    account = privacy.accountant()
    steps_per_round = epochs * len(loader)
    sigma = _planned_noise_multiplier(privacy, account, poisson_sample_rate(loader), steps_per_round, rounds)
    draw = privacy.randomness  # the site's CSPRNG (or, in tests only, the insecure seed)
    purpose = ("dp-sgd", site.name, privacy.run, round_number)
    private = make_private(model, make_optimizer(model, cfg), loader, max_grad_norm=privacy.max_grad_norm,
                           noise_multiplier=sigma, mode=privacy.mode, accountant_history=account.history,
                           criterion=DenoisingCriterion(model.diffusion),
                           noise_generator=draw.torch_generator(*purpose, "noise"),
                           sampling_generator=draw.torch_generator(*purpose, "poisson"))
    details = privacy.details(round=round_number, mode=privacy.mode)
    touched = n if privacy.policy.public_counts else 0  # controls + included canaries, where counts are public
    planned = private.planned_event(epochs, records_touched=touched)
    after = privacy.check(account, planned)  # BEFORE any step
    # Layers that draw from torch's global generator (dropout) get it seeded by the site too, and
    # it is restored afterwards, so nothing else in the process sees or sets those draws.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(draw.seed(*purpose, "global"))
        losses = dp_epochs(private, ema, epochs, draw.torch_generator(*purpose, "steps"),
                           draw.torch_generator(*purpose, "empty-batch-noise"), cfg.train.flip_augment, dev)
    event = private.round_event(records_touched=touched, **details)
    if event.steps != planned.steps:
        raise NdaeError(f"site {site.name!r}: DP-SGD took {event.steps} steps, {planned.steps} were budgeted")
    entry = privacy.spend(account, event)
    metrics = {"num-examples": n, "train-loss": float(np.mean(losses)) if losses else float("nan"),
               "local-steps": event.steps, "noise-multiplier": sigma, "epsilon": float(after),
               "ledger-entries": int(entry["index"]) + 1}
    return dae_to_record(private.module, ema), metrics, entry


# ---- normative moments -------------------------------------------------------------------------
def private_normative_statistics(site, weights, dae_config: dict, design: dict, privacy: SitePrivacy,
                                 *, device: str = "auto") -> tuple[dict, dict]:
    """Clipped, noised sufficient statistics of the controls (the payload the server sums) and
    the ledger entry of the release. The budget is checked before the statistics are computed."""
    from ndae.federation.site.statistics import covariates, encode_z_sem
    from ndae.normative import DesignSpec
    from ndae.privacy.dp_moments import private_moments

    spec = DesignSpec.from_dict(design)
    rows = site.controls
    account = privacy.accountant()
    event = privacy.moments_event()
    privacy.check(account, event)
    z_sem = encode_z_sem(site, weights, dae_config, rows, device)
    frame = covariates(site, rows)
    noisy = private_moments(spec.build(frame), z_sem, covariate_clip=privacy.moments_covariate_clip,
                            latent_clip=privacy.moments_latent_clip, noise_multiplier=privacy.moments_noise_multiplier,
                            rng=privacy.randomness.numpy_rng("moments", site.name, privacy.run),
                            public=_moments_payload(site, spec))
    if abs(noisy.sensitivity - event.clip) > 1e-12 * event.clip:
        raise NdaeError(f"moments sensitivity {noisy.sensitivity} differs from the budgeted {event.clip}")
    entry = privacy.spend(account, event)  # the event budgeted above: no count of clipped rows leaves
    return noisy.stats, entry


def _moments_payload(site, spec) -> dict:
    """The public fields of a moments release: no statistic of the data."""
    return {"site_names": np.array([site.name], dtype=np.str_),
            "design": np.array(json.dumps(spec.to_dict(), sort_keys=True)),  # as SufficientStats.to_arrays
            # the design's declared age range, not the observed one (that would be data)
            "covariate_min": np.array([spec.age_range[0]]), "covariate_max": np.array([spec.age_range[1]])}


# ---- prior residual moments --------------------------------------------------------------------
def private_prior_residual_statistics(site, weights, dae_config: dict, normative, design: dict,
                                      privacy: SitePrivacy, *, device: str = "auto") -> tuple[dict, list[str], dict]:
    """Clipped, noised sufficient statistics of the controls' prior residual region means, their
    column names (the atlas regions the slices cut: not data) and the ledger entry of the release:
    one Gaussian step like the z_sem moments, in the same accountant. The budget is checked
    before any residual is computed. Only the diagonal ΣY² of the latent
    block is released: the residuals' normative model needs no cross products (z-scores only)."""
    from ndae.federation.site.prior_residuals import prior_region_means
    from ndae.federation.site.statistics import covariates
    from ndae.normative import DesignSpec
    from ndae.privacy.dp_moments import private_moments

    spec = DesignSpec.from_dict(design)
    account = privacy.accountant()
    event = privacy.prior_residual_event()
    privacy.check(account, event)
    means = prior_region_means(site, weights, dae_config, normative, site.controls, device)
    noisy = private_moments(spec.build(covariates(site, site.controls)), means.values,
                            covariate_clip=privacy.moments_covariate_clip, latent_clip=privacy.prior_residual_clip,
                            noise_multiplier=privacy.prior_residual_noise_multiplier,
                            rng=privacy.randomness.numpy_rng("prior-residual-moments", site.name, privacy.run),
                            public=_moments_payload(site, spec), cross_products=False)
    if abs(noisy.sensitivity - event.clip) > 1e-12 * event.clip:
        raise NdaeError(f"prior residual moments sensitivity {noisy.sensitivity} differs from the budgeted {event.clip}")
    entry = privacy.spend(account, event)
    return noisy.stats, means.columns, entry
