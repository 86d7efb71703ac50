"""At the server: does the federated encoder's z_sem carry meaning? The age probe of `ndae train`
(trained encoder against the same encoder at its initial weights), computed from the sites'
normative statistics (`ndae.normative.age_probe`: leave-one-site-out ridge, exact from the sums).

The trained encoder's probe reuses the statistics the normative phase received, so it costs
nothing more and, in a private run, no privacy (post-processing of the noised sums). The
yardstick, the initial encoder, needs the controls' statistics under the initial weights too: in
a non-private run the normative query carries those weights (`initial_weights`) and each site
answers with both statistics in one reply; a private site never computes them (they would be
another release of its controls), so there the report says the yardstick was not computed.
"""

from __future__ import annotations

from typing import Any, Mapping

from flwr.app import ArrayRecord, RecordDict

from ndae.federation.records import INITIAL_STATS_KEY, INITIAL_WEIGHTS_KEY, ema_weights_record, record_to_arrays

__all__ = ["INITIAL_STATS_KEY", "INITIAL_WEIGHTS_KEY", "initial_weights", "latent_probe"]


def initial_weights(dae_config) -> ArrayRecord:
    """The weights federated training started from (`Federation._initial_dae`), as EMA weights."""
    from ndae.model import EMA, build_model

    initial = build_model(dae_config, seed=dae_config.train.seed)
    return ema_weights_record(EMA(initial, dae_config.train.ema_decay, dae_config.train.ema_warmup))


def _probe(replies: Mapping[str, RecordDict], key: str) -> dict[str, Any]:
    from ndae.normative import SufficientStats
    from ndae.normative.age_probe import site_out_age_probe

    return site_out_age_probe({s: SufficientStats.from_arrays(record_to_arrays(c[key]))
                               for s, c in replies.items() if key in c})


def latent_probe(replies: Mapping[str, RecordDict], private: bool) -> dict[str, Any]:
    """{"trained": probe, "init": probe or {"not_computed": why}, "trained_beats_init"?}."""
    result: dict[str, Any] = {"method": "leave-one-site-out ridge of age on standardised z_sem (alpha by GCV), "
                                        "from the sites' normative statistics",
                              "trained": _probe(replies, "stats")}
    if private:
        result["init"] = {"not_computed": "a private run: the initial encoder's statistics would be another "
                                          "release of each site's controls"}
        return result
    result["init"] = _probe(replies, INITIAL_STATS_KEY)
    if "r" in result["trained"] and "r" in result["init"]:
        result["trained_beats_init"] = bool(result["trained"]["r"] > result["init"]["r"])
    return result
