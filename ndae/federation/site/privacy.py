"""Runs AT THE SITE: the private releases of one hospital, under its own policy and ledger.

- `SitePrivacy.for_site(request, policy, site, n_controls, manifest)`: this run's settings at this
  site. Limits (budgets, δ, per-run ε, ledger location) come from the site's policy
  (`ndae.federation.site.policy`, node config only); the run config only chooses the noise and
  clip parameters and may ask for stricter limits.
- the DP releases that spend ε (`private_train_round`, `private_normative_statistics`,
  `private_prior_residual_statistics`) are in `ndae.federation.site.private_releases`; they check
  and spend through `SitePrivacy`.
- `record_declared`: a release that is not DP but that the site's policy allows (Cox likelihood
  terms, concordance counts, consented pooled scores): in the ledger, with what it held, outside ε.
- `ledger_reply`: what the server learns about the ledger: this run's excerpt of it (release
  metadata, no record), and the head, bound to the run, signed with the site's key.

"""

from __future__ import annotations

import hashlib
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

__all__ = ["SitePrivacy", "PRIOR_RESIDUAL_STATISTIC", "record_declared", "append_declared", "ledger_reply", "site_canaries", "run_id", "PrivacyBudgetExceeded",
           "pseudonymised_rows", "POOLED_ROW_CONTENT"]

from ndae.privacy.ledger import ACCOUNTED_MECHANISMS as ACCOUNTED  # with an ε; the others are declared releases

PRIOR_RESIDUAL_STATISTIC = "prior-residual-region-means"  # ledger details of the prior residuals' moments


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
    # the prior residuals' moments (a second Gaussian release of the same kind), when the run asks for them
    prior_residuals: bool = False
    prior_residual_noise_multiplier: float = 0.0
    prior_residual_clip: float = 1.0

    @classmethod
    def for_site(cls, config, policy: SitePolicy, site_name: str, n_controls: int, manifest,
                 flower_run_id: int | None = None) -> "SitePrivacy":
        from ndae.privacy.delta import check_delta

        try:
            check_delta(policy.delta, n_controls)
        except NdaeError as error:  # its text holds the number of records (and a bound that gives it)
            _log.warning("site %r: %s", site_name, error)
            from ndae.federation.site.context import SiteRefusal

            raise SiteRefusal(f"site {site_name!r}: node config 'delta' = {policy.delta:g} is too large for the "
                              "number of this site's records (delta must be at most 1/n^1.1; the bound is in the "
                              "site's log)") from None
        return cls(site=site_name, records=int(n_controls), policy=policy,
                   privacy_dir=policy.resolve_privacy_dir(manifest),
                   noise_multiplier=float(config.noise_multiplier), max_grad_norm=float(config.max_grad_norm),
                   target_epsilon=float(config.target_epsilon), mode=config.dp_mode,
                   moments_noise_multiplier=float(config.moments_noise_multiplier),
                   moments_covariate_clip=float(config.moments_covariate_clip),
                   moments_latent_clip=float(config.moments_latent_clip), run=run_id(config, flower_run_id),
                   prior_residuals=bool(config.prior_residuals),
                   prior_residual_noise_multiplier=float(config.prior_residual_noise_multiplier),
                   prior_residual_clip=float(config.prior_residual_clip))

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

    def prior_residual_event(self):
        """The Gaussian release of the prior residuals' moments: the same mechanism as the z_sem
        moments (one step at sample rate 1), its clip the residual vector's; the ledger details
        name the statistic, so an audit tells the two releases apart."""
        from ndae.privacy.accountant import PrivacyEvent
        from ndae.privacy.dp_moments import moments_sensitivity

        sensitivity = moments_sensitivity(self.moments_covariate_clip, self.prior_residual_clip)
        return PrivacyEvent("gaussian-moments", self.prior_residual_noise_multiplier, 1.0, 1, sensitivity,
                            self._records_for_ledger(), self.details(statistic=PRIOR_RESIDUAL_STATISTIC))

    def planned_moments_events(self) -> list:
        """The moments releases this run will make after training (target-epsilon plans for them).
        A noise-free prior residual release has no finite ε to plan with: the site refuses it when
        asked (unless its budget is unbounded), and that refusal must not stop the training."""
        prior = self.prior_residuals and self.prior_residual_noise_multiplier > 0
        return [self.moments_event(), *([self.prior_residual_event()] if prior else [])]

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
            target = (f", and no further than this run's target-epsilon {self.target_epsilon:g}"
                      if self.target_epsilon > 0 else "")
            raise PrivacyBudgetExceeded(
                f"site {self.site!r} refuses this {event.mechanism} release: it would exceed the site's privacy "
                f"budget (lifetime epsilon {self.budget_epsilon:g} at delta {self.budget_delta:g}, at most "
                f"{self.policy.max_epsilon_per_run:g} per run{target}; node config budget-epsilon / "
                "max-epsilon-per-run, run config target-epsilon; details in the site's log)") from None

    def check_round(self, account, round_number: int, rounds: int) -> None:
        """A DP-SGD round must be one the run declared (run config `rounds`) and not one this run
        already trained: the noise was planned for that many rounds. Counted in the ledger, so a
        server replaying a round number or sending more rounds is refused before any step."""
        trained = [e for e in account.entries
                   if e.get("mechanism") == "dp-sgd" and e.get("details", {}).get("run") == self.run]
        done = {e.get("details", {}).get("round") for e in trained}
        if not 1 <= round_number <= rounds or len(trained) >= rounds or round_number in done:
            raise PrivacyBudgetExceeded(
                f"site {self.site!r} refuses DP-SGD round {round_number}: this run declared run config "
                f"'rounds' = {rounds} and has trained {len(trained)} of them; each round is trained once")

    def _check(self, account, event) -> float:
        after = account.check_within(self.budget_epsilon, self.budget_delta, event)
        # target-epsilon is what this run declared it would bring the site to (earlier runs
        # included: the noise is solved for it); nothing may take the site past it. The slack
        # covers the solver's float arithmetic only.
        if self.target_epsilon > 0 and not after <= self.target_epsilon * (1 + 1e-9):
            raise PrivacyBudgetExceeded(
                f"site {self.site!r}: {event.mechanism} would bring epsilon to {after:.4f}, past this run's "
                f"target-epsilon {self.target_epsilon:g} (ledger {self.ledger})")
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
    """What the server learns about the site's ledger: an excerpt for this run (`ledger_excerpt`:
    this run's lines and the DP releases ε is composed from; another run's declared releases only
    as redacted stubs; no path), and the head signed with the site's key, bound to this run, its
    sequence (this run's line count), the site's ε, its budget and whether the noise was secure."""
    from ndae.privacy.ledger import GENESIS_HASH, canonical_json, ledger_excerpt, read_ledger
    from ndae.privacy.signing import public_key_text, sign_signed_head

    # Lines first, then the verified entries: a ledger only grows at its end, so the first
    # len(lines) entries are exactly those lines, whatever was appended in between (no lock is
    # taken here: a caller may hold the ledger's).
    # Split at b"\n" only, as `read_ledger` does: str.splitlines also splits at U+2028 and friends,
    # which canonical JSON leaves unescaped, and would pair another run's text with this run's entry.
    raw = privacy.ledger.read_bytes() if privacy.ledger.exists() else b""
    lines = [line.decode("utf-8") + "\n" for line in raw.split(b"\n")[:-1]]
    entries = read_ledger(privacy.ledger)[: len(lines)]
    epsilon = _spent(privacy, entries)
    key = _signing_key(privacy)
    head = {"site": privacy.site, "entries": len(entries),
            "final_hash": entries[-1]["hash"] if entries else GENESIS_HASH, "run": privacy.run,
            "run_entries": sum(1 for e in entries if e.get("details", {}).get("run") == privacy.run),
            "epsilon": float(epsilon) if math.isfinite(epsilon) else "inf", "delta": float(privacy.budget_delta),
            "budget_epsilon": float(privacy.budget_epsilon) if math.isfinite(privacy.budget_epsilon) else "inf",
            "insecure_seed": not privacy.randomness.secure, "private": True}
    return {"privacy-site": privacy.site, "ledger-head": head["final_hash"], "ledger-entries": len(entries),
            "epsilon": float(epsilon) if math.isfinite(epsilon) else -1.0,
            "delta": privacy.budget_delta, "budget-epsilon": privacy.budget_epsilon if math.isfinite(
                privacy.budget_epsilon) else -1.0,
            "signed-head": canonical_json(head),
            "ledger-text": ledger_excerpt(lines, entries, privacy.run),
            "ledger-signature": sign_signed_head(key, head),
            "signing-public-key": public_key_text(key)}


def record_declared(privacy: SitePrivacy, mechanism: str, **details: Any) -> dict:
    """Write a release that is not DP but allowed by the site's policy to the ledger (no ε).

    The entry carries what was released (e.g. the Cox β asked about and the aggregates sent),
    so that the site can show afterwards exactly what left it."""
    from ndae.privacy.ledger import ledger_lock, read_ledger

    with ledger_lock(privacy.ledger):
        return append_declared(privacy, read_ledger(privacy.ledger), mechanism, **details)


def append_declared(privacy: SitePrivacy, entries: list[dict], mechanism: str, **details: Any) -> dict:
    """`record_declared` for a caller that holds the ledger's lock and has read its `entries`
    (so that counting earlier entries and writing this one cannot interleave with another writer)."""
    from ndae.privacy.ledger import append_entry

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
