"""At the server: does the federated encoder's z_sem carry meaning? The age probe of `ndae train`
(trained encoder against the same encoder at its initial weights), computed from the sites'
normative statistics (`ndae.normative.age_probe`: leave-one-site-out ridge, exact from the sums).

The trained encoder's probe reuses the statistics the normative phase received, so it costs
nothing more. The yardstick, the initial encoder, needs the controls' statistics under the
initial weights too: the normative query carries those weights (`initial_weights`) and each site
answers with both statistics in one reply. Non-private runs only: a private site never computes
the second (another release), and its noised statistics of clipped design rows do not give an
honest age probe, so a private run's report says why neither was computed.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from ndae.federation.records import INITIAL_STATS_KEY, INITIAL_WEIGHTS_KEY, ema_weights_record, record_to_arrays

__all__ = ["INITIAL_STATS_KEY", "INITIAL_WEIGHTS_KEY", "initial_weights", "latent_probe"]


def initial_weights(dae_config) -> ArrayRecord:
    """The weights federated training started from (`Federation._initial_dae`), as EMA weights."""
    from ndae.model import EMA, build_model

    initial = build_model(dae_config, seed=dae_config.train.seed)
    return ema_weights_record(EMA(initial, dae_config.train.ema_decay, dae_config.train.ema_warmup))


def _probe(replies: Mapping[str, RecordDict], key: str, sites: list[str]) -> dict[str, Any]:
    """The probe on `sites`' statistics under `key`; a malformed or non-finite reply is a reason,
    never a failed run (the probe only describes the latent)."""
    from ndae.errors import NdaeError
    from ndae.normative import SufficientStats
    from ndae.normative.age_probe import site_out_age_probe

    try:
        stats = {s: SufficientStats.from_arrays(record_to_arrays(replies[s][key])) for s in sites}
        return site_out_age_probe(stats)
    except (NdaeError, KeyError, ValueError, np.linalg.LinAlgError) as error:
        return {"not_computed": f"the sites' statistics do not support it ({type(error).__name__}: "
                                f"{str(error).splitlines()[0][:160] if str(error) else ''})"}


def latent_probe(replies: Mapping[str, RecordDict], withheld: str, initial_withheld: str) -> dict[str, Any]:
    """{"trained": probe, "init": probe, "trained_beats_init"?}; each probe may be {"not_computed": why}.
    `withheld`, `initial_withheld`: why the run does without either probe (private runs, `release_policy`)."""
    result: dict[str, Any] = {"method": "leave-one-site-out ridge of age on standardised z_sem (alpha by GCV), "
                                        "from the sites' normative statistics"}
    if withheld:
        result["trained"] = {"not_computed": withheld}
        result["init"] = {"not_computed": initial_withheld or withheld}
        return result
    both = sorted(s for s, c in replies.items() if "stats" in c and INITIAL_STATS_KEY in c)  # the same controls
    result["trained"] = _probe(replies, "stats", both)
    result["init"] = _probe(replies, INITIAL_STATS_KEY, both)
    if "r" in result["trained"] and "r" in result["init"] and all(
            np.isfinite(result[k]["r"]) for k in ("trained", "init")):
        result["trained_beats_init"] = bool(result["trained"]["r"] > result["init"]["r"])
    return result
