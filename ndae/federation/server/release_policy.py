"""Runs AT THE SERVER: everything a private run changes at the server, in one place.

The site decides what leaves it (`ndae.federation.site.releases`, the release table); the server's
side is this policy, built from the run's `FederationConfig`. The phases and the report ask it and
never test the privacy flag themselves:

- `NOISED_SUMS`: the queries whose summed replies a private site noises (Gaussian moments), each
  with the run config field of its noise multiplier; `fit_input` turns such a noised sum into a
  valid fit input and says which sites the noise swamps.
- `NON_PRIVATE_EXTRAS`: what a non-private run asks for or computes beside the DP releases, and
  why a private run does without it (`asks`, `withheld`): none is a differentially private release,
  so the server does not ask, and a site would refuse or withhold it anyway.
- the sites' ledgers: the signed heads a private run keeps (`ndae.federation.server.privacy`).
- the report's privacy lines.

A new kind of release touches the server here: a row in `NOISED_SUMS` or `NON_PRIVATE_EXTRAS`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["NOISED_SUMS", "NON_PRIVATE_EXTRAS", "HELD_OUT_CALIBRATION", "AGE_PROBE", "AGE_PROBE_INITIAL",
           "VOXELWISE_BASELINE", "PRIOR_SWAP", "ReleasePolicy"]

# query -> the FederationConfig field of the noise multiplier its sites add to their summed moments
NOISED_SUMS: dict[str, str] = {
    "normative_stats": "moments_noise_multiplier",
    "prior_residual_stats": "prior_residual_noise_multiplier",
}

HELD_OUT_CALIBRATION = "held-out-calibration"  # per-fold statistics of the controls (`score_distributions`)
AGE_PROBE = "age-probe"  # the trained encoder's age probe from the normative statistics (`latent_probe`)
AGE_PROBE_INITIAL = "age-probe-initial"  # its yardstick: the controls' statistics under the initial weights
VOXELWISE_BASELINE = "voxelwise-baseline"  # per-voxel moments of the controls (`voxelwise_phase`)
PRIOR_SWAP = "prior-swap"  # the swap test of the prior residuals (`prior_residual_phase.swap_test`)

# Clipped design rows do not read back as age (a young age reads as an older one at the default
# clip), and one site's noised sums can give n < 0 or an indefinite ZᵀZ: no honest probe.
_NOISED_PROBE = ("a private run: the sites' statistics are noised and their design rows clipped, so the age they "
                 "encode is not the age (measured: 18 y reads as ~30 y at the default clip)")

# extra -> why a private run does without it (the summary's and report's "not computed" reason)
NON_PRIVATE_EXTRAS: dict[str, str] = {
    HELD_OUT_CALIBRATION: ("a private run: per-fold statistics of the controls would be exact moments, not a "
                           "differentially private release, so no site sends them and no held-out model is fitted"),
    AGE_PROBE: _NOISED_PROBE,
    AGE_PROBE_INITIAL: _NOISED_PROBE + "; the initial encoder's statistics would be another release",
    VOXELWISE_BASELINE: ("a private run: per-voxel moments are exact sums, not a differentially private release, "
                         "so no site is asked for them"),
    PRIOR_SWAP: ("a private run: the swap test is a statistic of each site's own subjects, not a differentially "
                 "private release, so the sites keep it"),
}


class ReleasePolicy:
    """The server's privacy decisions for one run, from its config (a `FederationConfig`, or any
    object with its fields)."""

    def __init__(self, config):
        self.config = config
        self.private = bool(config.privacy)

    # ---- what the server asks for ------------------------------------------------------------
    def asks(self, extra: str) -> bool:
        """Whether the run asks the sites for (or computes) `extra`, one of `NON_PRIVATE_EXTRAS`."""
        return not self.withheld(extra)

    def withheld(self, extra: str) -> str:
        """Why the run does without `extra` ("" where it does not)."""
        reason = NON_PRIVATE_EXTRAS[extra]  # a KeyError names an extra the table lacks
        return reason if self.private else ""

    # ---- what it does with the replies -----------------------------------------------------------
    def fit_input(self, query: str, stats, per_site: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[Any, list[str]]:
        """(the summed `stats` of `query` as a valid fit input, warnings): a private run's noised
        sums post-processed (`ndae.privacy.moments_postprocessing`) with a warning for each site
        the noise swamps (`per_site`: each site's statistics as arrays); else unchanged."""
        if not (self.private and getattr(self.config, NOISED_SUMS[query]) > 0):
            return stats, []
        from ndae.privacy.moments_postprocessing import moments_noise_warnings, postprocess_noisy_stats

        warnings = moments_noise_warnings(per_site)
        return postprocess_noisy_stats(stats), warnings

    # ---- the sites' ledgers -----------------------------------------------------------------
    def resumed_heads(self, run_dir: str | os.PathLike) -> dict[str, dict]:
        """The sites' ledger heads a resumed private run had recorded ({} otherwise)."""
        if not self.private:
            return {}
        from ndae.federation.server.privacy import load_heads

        return load_heads(run_dir)

    def record_ledgers(self, run_dir: str | os.PathLike, heads: dict[str, dict], replies: Mapping[str, Mapping],
                       missing: list[dict], log: Callable[[str], None]) -> None:
        """A private run keeps each answering site's ledger head and excerpt (`privacy/`)."""
        if self.private:
            from ndae.federation.server.privacy import record_replies

            record_replies(run_dir, heads, replies, missing, log)

    def summary(self, heads: dict[str, dict]) -> dict[str, Any]:
        """The summary's privacy part: the sites' ledger heads and epsilons (private runs)."""
        return {"privacy": heads} if self.private else {}

    # ---- what the report says ----------------------------------------------------------------
    @property
    def noisy_count(self) -> str:
        """What follows a count of controls summed from the sites' statistics."""
        return " (noisy DP count)" if self.private else ""

    @property
    def on_off(self) -> str:
        return "on" if self.private else "off"

    def opening_lines(self, summary: dict) -> list[str]:
        """The line a report opens with when a site drew its noise from the test-only seed."""
        from ndae.federation.server.privacy import insecure_seed_lines

        return insecure_seed_lines(summary.get("privacy"))

    def ledger_lines(self, summary: dict) -> list[str]:
        """The report's privacy section: the mechanisms and each site's ledger head."""
        if "privacy" not in summary:
            return []
        config = self.config
        lines = ["", "## Privacy (per site, from its hash-chained ledger)", "",
                 f"DP-SGD (Opacus `{config.dp_mode}`, max-grad-norm {config.max_grad_norm:g}) and Gaussian "
                 f"normative moments (noise multiplier {config.moments_noise_multiplier:g}, clips: design row "
                 f"{config.moments_covariate_clip:g}, z_sem {config.moments_latent_clip:g})"
                 + (f", and the prior residuals' moments (noise multiplier {config.prior_residual_noise_multiplier:g}, "
                    f"clip of the region means {config.prior_residual_clip:g})" if config.prior_residuals else "")
                 + "; epsilon composed over "
                 "every release of the site (RDP). Each site signs its ledger head with its own key; "
                 "`ndae audit RUN --keys REGISTRY` verifies the chains, the heads in `privacy/heads.json` and their "
                 "signatures against the consortium's registered keys.", "",
                 "| site | epsilon spent | delta | budget epsilon | releases | final ledger hash |",
                 "|---|---|---|---|---|---|"]
        for site, head in sorted(summary["privacy"].items()):
            lines.append(f"| {site} | {_fmt(head.get('epsilon'), 4)} | {head.get('delta', 0):.3g} | "
                         f"{_fmt(head.get('budget_epsilon'))} | {head.get('entries')} | `{head.get('final_hash')}` |")
        return lines

    def pooled_rows_clause(self) -> str:
        """What the pooled rows the consenting sites sent hold."""
        if self.private:
            from ndae.federation.site.privacy import POOLED_ROW_CONTENT

            held = "; ".join(f"{k}: {v}" for k, v in POOLED_ROW_CONTENT.items())
            return f"consenting sites shared patients' deviation scores, sex and event, with {held}"
        return "sites shared patients' deviation scores with their subject ids, age, sex and follow-up"

    def km_withheld_lines(self, survival: dict) -> list[str]:
        """Why a private run's report has no Kaplan–Meier curves (a site withholds the counts)."""
        if self.private and "cox_refused" not in survival:
            return ["", "Kaplan–Meier counts per month are row-level on a small site: private sites keep them."]
        return []


def _fmt(value, digits: int = 3) -> str:
    from ndae.federation.server.report import _fmt as fmt  # here: the report imports this module

    return fmt(value, digits)
