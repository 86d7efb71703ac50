"""Runs AT THE SITE: the private releases of one hospital, under its own policy and ledger.

- `SitePrivacy.for_site(request, policy, site, n_controls, manifest)`: this run's settings at this
  site. Limits (budgets, δ, per-run ε, ledger location) come from the site's policy
  (`ndae.federation.site.policy`, node config only); the run config only chooses the noise and
  clip parameters and may ask for stricter limits.
- `private_train_round`: one round of DP-SGD (Opacus, Poisson sampling) over the site's
  controls. Every random draw comes from the site's CSPRNG (`ndae.privacy.randomness`), never
  from the run config's seed. The round is checked against the lifetime budget and the per-run
  cap before the first step and written to the ledger before the weights leave the site.
- `private_normative_statistics`: clipped, Gaussian-noised sufficient statistics of the
  controls' latents (`ndae.privacy.dp_moments`), accounted the same way.
- `record_declared`: a release that is not DP but that the site's policy allows (Cox likelihood
  terms, concordance counts, consented pooled scores): in the ledger, with what it held, outside ε.
- `ledger_reply`: what the server learns about the ledger: its text (release metadata, no
  record), head, ε, δ, and the head signed with the site's key.

`target-epsilon` (if > 0) is the ε this run's DAE training AND moments release should reach, on
top of the site's earlier runs; the noise multiplier is solved once from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ndae.errors import NdaeError, PrivacyBudgetExceeded
from ndae.federation.site.policy import SitePolicy
from ndae.privacy.randomness import SiteRandomness

_log = logging.getLogger("ndae.site")

__all__ = ["SitePrivacy", "private_train_round", "private_normative_statistics", "record_declared", "ledger_reply",
           "site_canaries", "run_id", "PrivacyBudgetExceeded", "pseudonymised_rows",
           "POOLED_ROW_CONTENT"]

from ndae.privacy.ledger import ACCOUNTED_MECHANISMS as ACCOUNTED  # with an ε; the others are declared releases


def run_id(config, flower_run_id: int | None = None) -> str:
    """Identifies this run in ledger details (so a later run can tell its own lines apart)."""
    key = f"{Path(config.run_dir).expanduser().resolve()}|{flower_run_id}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class SitePrivacy:
    """One site's privacy settings and account for this run."""

    site: str
    records: int  # the controls: the records DP-SGD and the moments protect
    policy: SitePolicy  # already made the stricter of the site's policy and the run's request
    privacy_dir: Path
    noise_multiplier: float
    max_grad_norm: float
    target_epsilon: float
    mode: str
    moments_noise_multiplier: float
    moments_covariate_clip: float
    moments_latent_clip: float
    run: str

    @classmethod
    def for_site(cls, config, policy: SitePolicy, site_name: str, n_controls: int, manifest,
                 flower_run_id: int | None = None) -> "SitePrivacy":
        from ndae.privacy.delta import check_delta

        check_delta(policy.delta, n_controls)
        return cls(site=site_name, records=int(n_controls), policy=policy,
                   privacy_dir=policy.resolve_privacy_dir(manifest),
                   noise_multiplier=float(config.noise_multiplier), max_grad_norm=float(config.max_grad_norm),
                   target_epsilon=float(config.target_epsilon), mode=config.dp_mode,
                   moments_noise_multiplier=float(config.moments_noise_multiplier),
                   moments_covariate_clip=float(config.moments_covariate_clip),
                   moments_latent_clip=float(config.moments_latent_clip), run=run_id(config, flower_run_id))

    @property
    def randomness(self) -> SiteRandomness:
        return SiteRandomness(self.policy.insecure_seed)

    @property
    def delta(self) -> float:
        return self.policy.delta

    @property
    def budget_epsilon(self) -> float:
        return self.policy.budget_epsilon

    @property
    def budget_delta(self) -> float:
        return self.policy.budget_delta

    @property
    def ledger(self) -> Path:
        return self.privacy_dir / f"{self.site}.jsonl"

    def details(self, **extra: Any) -> dict[str, Any]:
        """Ledger details of every release: the run, and whether the noise was reproducible."""
        details = {"run": self.run, **extra}
        if not self.randomness.secure:
            details["insecure_reproducible_seed"] = True  # an audit must see this
        return details

    def accountant(self):
        from ndae.privacy.accountant import SiteAccountant

        return SiteAccountant(self.ledger, self.site)

    def moments_event(self):
        """The (planned) Gaussian release of the moments, for budgeting before training."""
        from ndae.privacy.accountant import PrivacyEvent
        from ndae.privacy.dp_moments import moments_sensitivity

        sensitivity = moments_sensitivity(self.moments_covariate_clip, self.moments_latent_clip)
        return PrivacyEvent("gaussian-moments", self.moments_noise_multiplier, 1.0, 1, sensitivity,
                            self._records_for_ledger(), self.details())

    def _records_for_ledger(self) -> int:
        # The ledger travels to the server: an exact count only where the site declares counts public.
        return self.records if self.policy.public_counts else 0

    def check(self, account, event) -> float:
        """Refuse (PrivacyBudgetExceeded, nothing written) if `event` would take the site past
        its lifetime budget or this run past the per-run cap; return the lifetime ε after it.

        The refusal travels to the server: it names the site and its limits (policy, public) but
        not the ε it would have reached, the sample rate or the steps (they follow from the
        number of records); the details go to the site's own log."""
        try:
            return self._check(account, event)
        except PrivacyBudgetExceeded as error:
            _log.warning("%s", error)
            raise PrivacyBudgetExceeded(
                f"site {self.site!r} refuses this {event.mechanism} release: it would exceed the site's privacy "
                f"budget (lifetime epsilon {self.budget_epsilon:g} at delta {self.budget_delta:g}, at most "
                f"{self.policy.max_epsilon_per_run:g} per run; node config budget-epsilon / max-epsilon-per-run; "
                "details in the site's log)") from None

    def _check(self, account, event) -> float:
        after = account.check_within(self.budget_epsilon, self.budget_delta, event)
        this_run = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in account.entries
                    if e["mechanism"] in ACCOUNTED and e.get("details", {}).get("run") == self.run]
        from ndae.privacy.accountant import epsilon_of

        run_epsilon = epsilon_of(this_run + [event.step], self.budget_delta)
        if not run_epsilon <= self.policy.max_epsilon_per_run:
            raise PrivacyBudgetExceeded(
                f"site {self.site!r}: this run would spend epsilon {run_epsilon:.4f}, over the site's per-run cap "
                f"{self.policy.max_epsilon_per_run:g} (node config max-epsilon-per-run; ledger {self.ledger})")
        return after

    def spend(self, account, event) -> dict:
        self.check(account, event)
        return account.spend_if_within(self.budget_epsilon, self.budget_delta, event)


def site_canaries(config, privacy: SitePrivacy | None, site, policy: SitePolicy):
    """The site's canaries for a one-run audit (None unless run config audit-canaries > 0).

    Which canaries are included is decided by a seed from the site's CSPRNG, kept in a 0600
    record next to its ledger (`ndae.privacy.canaries.site_canaries`): the server never knows it."""
    if config.audit_canaries <= 0:
        return None
    from ndae.privacy.canaries import site_canaries as canaries_at

    ages = np.asarray(site.data.ages, np.float64)[site.controls]
    folder = privacy.privacy_dir if privacy is not None else policy.resolve_privacy_dir(site.manifest_path)
    randomness = SiteRandomness(policy.insecure_seed)
    return canaries_at(folder, site.name, int(config.audit_canaries), tuple(int(s) for s in site.data.images.shape[1:]),
                       (float(ages.min()), float(ages.max())) if ages.size else (0.0, 0.0),
                       lambda: randomness.seed("canaries", site.name))


def _signing_key(privacy: SitePrivacy):
    from ndae.privacy.signing import load_or_create_signing_key, signing_key_path

    path = Path(privacy.policy.signing_key_file).expanduser() if privacy.policy.signing_key_file else \
        signing_key_path(privacy.privacy_dir, privacy.site)
    return load_or_create_signing_key(path)


def ledger_reply(privacy: SitePrivacy) -> dict[str, Any]:
    """What the server learns about the site's ledger: head hash, length, ε, the ledger text
    (release metadata only, no record, no count unless declared public) so the run directory
    can keep an auditable copy, and the head signed with the site's key."""
    from ndae.privacy.ledger import GENESIS_HASH, read_ledger
    from ndae.privacy.signing import public_key_text, sign_head

    entries = read_ledger(privacy.ledger)
    epsilon = _spent(privacy, entries)
    head = entries[-1]["hash"] if entries else GENESIS_HASH
    key = _signing_key(privacy)
    return {"privacy-site": privacy.site, "ledger-head": head, "ledger-entries": len(entries),
            "epsilon": float(epsilon) if math.isfinite(epsilon) else -1.0,
            "delta": privacy.budget_delta, "budget-epsilon": privacy.budget_epsilon if math.isfinite(
                privacy.budget_epsilon) else -1.0,
            "ledger-path": str(privacy.ledger.resolve()),
            "ledger-text": privacy.ledger.read_text() if privacy.ledger.exists() else "",
            "ledger-signature": sign_head(key, privacy.site, head, len(entries)),
            "signing-public-key": public_key_text(key)}


def record_declared(privacy: SitePrivacy, mechanism: str, **details: Any) -> dict:
    """Write a release that is not DP but allowed by the site's policy to the ledger (no ε).

    The entry carries what was released (e.g. the Cox β asked about and the aggregates sent),
    so that the site can show afterwards exactly what left it."""
    from ndae.privacy.ledger import append_entry, ledger_lock

    from ndae.privacy.ledger import read_ledger

    with ledger_lock(privacy.ledger):
        entries = read_ledger(privacy.ledger)
        accountant = entries[-1]["accountant"] if entries else "rdp"
        return append_entry(privacy.ledger, site=privacy.site, mechanism=mechanism, noise_multiplier=0.0, clip=0.0,
                            sample_rate=1.0, steps=1, records_touched=privacy._records_for_ledger(),
                            delta=privacy.budget_delta, epsilon_spent_so_far=_spent(privacy, entries),
                            accountant=accountant, details=privacy.details(**details))


def _spent(privacy: SitePrivacy, entries: list[dict]) -> float:
    """The site's ε so far: what its last DP release recorded, when recorded at today's δ (no
    accountant needed: a declared release or a ledger reply then starts no Opacus, which costs a
    ClientApp process seconds per message); else recomputed from the whole history."""
    from ndae.privacy.ledger import decode_epsilon

    accounted = [e for e in entries if e["mechanism"] in ACCOUNTED]
    if not accounted:
        return 0.0
    if float(accounted[-1]["delta"]) == float(privacy.budget_delta):
        return decode_epsilon(accounted[-1]["epsilon_spent_so_far"])
    return privacy.accountant().epsilon(privacy.budget_delta)


# What a pooled patient row of a private run holds in place of the manifest's values (the other
# columns: site, sex_female, event and the deviation scores).
POOLED_ROW_CONTENT = {"subject": "a pseudonym drawn for this run", "age": "whole years (rounded down)",
                      "time": "whole months (rounded up)", "order": "shuffled"}


def pseudonymised_rows(table, privacy: SitePrivacy):
    """The patients' rows as they may leave in a private run (`POOLED_ROW_CONTENT`). The site
    keeps the pseudonym → subject key in a 0600 file beside its ledger, so it can link back."""
    import pandas as pd

    from ndae.io import atomic_write_text

    draw = privacy.randomness
    rows = table.copy().reset_index(drop=True)
    order = draw.numpy_rng("row-order", privacy.run, privacy.site).permutation(len(rows))
    rows = rows.iloc[order].reset_index(drop=True)
    pseudonyms = [f"p{draw.token(6, 'pseudonym', privacy.run, privacy.site, i)}" for i in range(len(rows))]
    key = pd.DataFrame({"pseudonym": pseudonyms, "subject": rows["subject"].astype(str)})
    atomic_write_text(privacy.privacy_dir / f"{privacy.site}.{privacy.run}.pseudonyms.csv",
                      key.to_csv(index=False, lineterminator="\n"), private=True)
    rows["subject"] = pseudonyms
    rows["age"] = np.floor(rows["age"].astype(float))
    rows["time"] = np.ceil(rows["time"].astype(float))
    return rows


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
    planned = earlier + [privacy.moments_event().step]
    try:
        return noise_multiplier_for_budget(privacy.target_epsilon, privacy.budget_delta, sample_rate,
                                           steps_per_round * rounds, planned)
    except NdaeError as error:
        raise PrivacyBudgetExceeded(
            f"site {privacy.site!r}: no DP-SGD noise reaches target-epsilon {privacy.target_epsilon:g} at delta "
            f"{privacy.budget_delta:g} after earlier runs and this run's moments release ({error}; ledger "
            f"{privacy.ledger})") from None


def private_train_round(site, weights, dae_config: dict, privacy: SitePrivacy, *, round_number: int, rounds: int,
                        epochs: int, ema_step: int, device: str = "auto", canaries=None):
    """One DP-SGD round at the site: returns (weights record, metrics, ledger entry). Raises
    PrivacyBudgetExceeded (nothing written) if the round would take the site past its budget."""
    import torch

    from ndae.federation.records import dae_to_record
    from ndae.federation.site.task import resolve_device, start_local_round
    from ndae.model import make_optimizer
    from ndae.privacy.dp_sgd_loop import DenoisingCriterion, dp_epochs
    from ndae.privacy.opacus_training import make_private, poisson_sample_rate

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
    from ndae.federation.site.task import covariates, encode_z_sem
    from ndae.normative import DesignSpec
    from ndae.privacy.dp_moments import private_moments

    spec = DesignSpec.from_dict(design)
    rows = site.controls
    account = privacy.accountant()
    event = privacy.moments_event()
    privacy.check(account, event)
    z_sem = encode_z_sem(site, weights, dae_config, rows, device)
    frame = covariates(site, rows)
    public = {"site_names": np.array([site.name], dtype=np.str_),
              "design": np.array(json.dumps(spec.to_dict(), sort_keys=True)),  # as SufficientStats.to_arrays
              # the design's declared age range, not the observed one (that would be data)
              "covariate_min": np.array([spec.age_range[0]]), "covariate_max": np.array([spec.age_range[1]])}
    noisy = private_moments(spec.build(frame), z_sem, covariate_clip=privacy.moments_covariate_clip,
                            latent_clip=privacy.moments_latent_clip, noise_multiplier=privacy.moments_noise_multiplier,
                            rng=privacy.randomness.numpy_rng("moments", site.name, privacy.run), public=public)
    if abs(noisy.sensitivity - event.clip) > 1e-12 * event.clip:
        raise NdaeError(f"moments sensitivity {noisy.sensitivity} differs from the budgeted {event.clip}")
    entry = privacy.spend(account, event)  # the event budgeted above: no count of clipped rows leaves
    return noisy.stats, entry
