"""The phases of one federated run, driven by the ServerApp (`run_federation(grid, config)`).

0. site_info: who is there (site name, counts, slice shape), from each node's own manifest.
1. DAE: R rounds of FedAvg / FedAdam / FedProx (Flower's strategies, `strategy`) over the sites'
   controls; the global model (+ EMA) is checkpointed after every round and a restarted server
   resumes from the last checkpoint (`resume`).
2. normative: sites send the controls' sufficient statistics of z_sem; the server sums them
   (in site order), fits the normative model and saves it, and probes z_sem for age from the
   same statistics (`latent_probe`).
2b. prior residuals (`prior_residual_phase`): the sites' summed statistics of their controls'
   residuals from the diffusion prior (per atlas region) give the residuals' normative model; the
   sites z-score their patients against it in phase 3 (`z_prior_<region>`).
2c. the voxel-wise normative baseline (`voxelwise_phase`, non-private runs): per-voxel sums of
   the controls, fitted at the server and scored at the sites beside the NDAE scores.
3. deviations and survival (`survival_phase`): pooled rows or federated Newton rounds, the
   covariates-only model beside the full one, and one risk summary scoring both.
4. report: `report.md`, `survival/`, `metrics.jsonl`, `status.json` (`report`, `run_files`).

A site that fails or does not answer within `round-timeout` is left out of that phase (and
named in the report); the run goes on while at least `min-sites` answer, else it fails with
`FederationError` and `status.json` says so (`messaging`).

Phases 2b–3 live in their own modules and get a `PhaseContext` and the fitted models they use as
arguments, never the `Federation`; every phase returns what the summary says about it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from flwr.app import ConfigRecord, Message, RecordDict

from ndae.federation.config import FederationConfig
from ndae.federation.records import (
    dae_to_record, ema_weights_record, record_to_arrays, record_to_dae,
)
from ndae.federation.server.errors import FederationError, SimulatedKill
from ndae.federation.server.messaging import RunState, SiteMessenger
from ndae.federation.server.phase_context import PhaseContext
from ndae.federation.server.release_policy import AGE_PROBE, AGE_PROBE_INITIAL, HELD_OUT_CALIBRATION, ReleasePolicy
from ndae.federation.server.run_files import RunFiles
from ndae.federation.server.survival_phase import SurvivalPhase
from ndae.federation.server.strategy import dae_config_for, load_strategy_state, make_strategy, strategy_state

if TYPE_CHECKING:  # torch and the normative model load only when a phase needs them
    from ndae.model.config import DAEConfig
    from ndae.normative import NormativeModel, SufficientStats

__all__ = ["Federation", "FederationError", "SimulatedKill", "dae_config_for", "run_federation"]


@dataclass(frozen=True)
class NormativeFit:
    """Phase 2's result: the summed statistics, the model fitted on them, what the noise
    post-processing warned about (private runs) and the age probe of z_sem."""
    stats: SufficientStats
    model: NormativeModel
    warnings: list[str]
    latent_probe: dict[str, Any]
    # the leave-one-fold-out models of the held-out calibration, or why there are none
    held_out: tuple[list, str | None]


class Federation:
    """One federated run over a Flower `Grid` (real, simulated, or `InProcessGrid`).

    Its own state is what the run accumulates across phases (`state`, `timings`, `privacy_heads`,
    the DAE config once the sites said how many slices they prepare); the later phases get a
    `PhaseContext` and the fitted models as arguments, and return what the summary says."""

    def __init__(self, grid, config: FederationConfig, log: Callable[[str], None] = print):
        config = replace(config, survival_mode=config.effective_survival_mode)  # auto -> pooled / federated
        self.grid, self.config, self.log = grid, config, log
        self.releases = ReleasePolicy(config)  # every privacy decision of the run
        self.run_dir = Path(config.run_dir).expanduser().resolve()
        self.files = RunFiles(self.run_dir)
        self.state = RunState()
        self.messenger = SiteMessenger(grid, config, self.state, log, on_answers=self._record_privacy)
        self.privacy_heads: dict[str, dict] = {}  # site -> its ledger head, epsilon (private runs)
        self.timings: dict[str, float] = {}
        self.dae_config: DAEConfig | None = None  # known once every site said how many slices it prepares
        self._rounds_started: tuple[float, int] | None = None  # (time, round) of this process's first round

    # ---- run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.privacy_heads = self.releases.resumed_heads(self.run_dir)  # a resumed run keeps the heads it had
        self.files.write_status("running", self.state.missing)
        try:
            summary = self._run()
        except SimulatedKill:
            self.files.write_status("stopped", self.state.missing, "stopped by stop-after-round (test hook)")
            raise
        except BaseException as error:
            self.files.write_status("failed", self.state.missing, f"{type(error).__name__}: {error}")
            from ndae.federation.server.report import write_failure_report

            write_failure_report(self.run_dir, self.config, f"{type(error).__name__}: {error}", self.state.missing)
            raise
        self.files.write_status("completed", self.state.missing)
        return summary

    def _run(self) -> dict[str, Any]:
        started = time.time()
        self.phase_site_info()
        channels = {info["channels"] for info in self.state.info.values()}
        if len(channels) != 1:
            raise FederationError(f"sites prepare different numbers of slices: {self.state.info}")
        self.dae_config = dae_config_for(self.config, channels.pop())
        self.files.write_config({"federation": self.config.to_dict(), "dae": self.dae_config.to_dict(),
                                 "sites": self.state.info})
        t = time.time()
        model, ema = self.phase_dae()
        self.timings["dae_training_s"] = time.time() - t
        t = time.time()
        normative = self.phase_normative(ema)
        self.timings["normative_s"] = time.time() - t
        context = PhaseContext(self.config, self.dae_config, self.messenger, self.files, self.log, self.releases)
        t = time.time()
        from ndae.federation.server.prior_residual_phase import fit_prior_residuals, survival_features

        prior, prior_info = fit_prior_residuals(context, ema, normative.model, list(normative.stats.site_names))
        features, dropped = survival_features(self.config.features, prior_info)
        if dropped:
            prior_info["survival"] = dropped
            self.log(f"[prior residuals] {dropped}")
        self.timings["prior_residuals_s"] = time.time() - t
        t = time.time()
        from ndae.federation.server.voxelwise_phase import fit_voxelwise

        voxelwise, voxelwise_info = fit_voxelwise(context)
        self.timings["voxelwise_s"] = time.time() - t
        t = time.time()
        survival = SurvivalPhase(context, features, normative.held_out).run(ema, normative.model, voxelwise, prior)
        self.timings["survival_s"] = time.time() - t
        self.timings["total_s"] = time.time() - started
        from ndae.federation.server.report import write_report

        summary = {"sites": self.state.info, "missing": self.state.missing, "timings": self.timings,
                   "normative": {"n_controls": float(normative.stats.n), "sites": list(normative.stats.site_names),
                                 "warnings": normative.warnings},
                   "latent_probe": normative.latent_probe, "voxelwise": voxelwise_info,
                   "prior_residuals": prior_info,
                   "survival": survival, "participation": self.state.participation,
                   **self.releases.summary(self.privacy_heads)}
        write_report(self.run_dir, self.config, summary, self.files.metrics())
        self.files.write_summary(summary)
        return summary

    # ---- phase 0: who is there ---------------------------------------------------------------
    def phase_site_info(self) -> None:
        deadline = time.time() + self.config.round_timeout
        while len(list(self.grid.get_node_ids())) < self.config.min_sites and time.time() < deadline:
            time.sleep(1.0)  # deployment: SuperNodes may still be connecting
        nodes = sorted(self.grid.get_node_ids())
        messages = [Message(RecordDict(), dst_node_id=n, message_type="query.site_info") for n in nodes]
        replies = self.messenger.send(messages)
        for reply in replies:  # the site names come from these replies: learn them before sorting
            if not reply.has_error():
                site = str(reply.content["info"]["site"])
                if site in self.state.sites.values():
                    raise FederationError(f"two nodes claim site {site!r}: every site needs its own manifest")
                self.state.sites[reply.metadata.src_node_id] = site
        result = self.messenger.collect("site_info", nodes, replies)
        self.state.info = {site: dict(content["info"]) for site, content in result.replies.items()}
        self.state.participation = {site: 0 for site in self.state.info}
        described = [f"{s} ({i['controls']} controls, {i['patients']} patients)" if int(i["controls"]) >= 0
                     else f"{s} (counts withheld by its policy)" for s, i in self.state.info.items()]
        self.log("sites: " + ", ".join(described))

    # ---- phase 1: the DAE ----------------------------------------------------------------------
    def phase_dae(self):
        from ndae.model import make_optimizer

        strategy = make_strategy(self.config, self.dae_config)
        model, ema, start, global_step = self._initial_dae(strategy)
        self.files.truncate_metrics(start)
        optimizer = make_optimizer(model, self.dae_config)  # the server takes no local steps; kept for the checkpoint format
        for round_number in range(start + 1, self.config.rounds + 1):
            global_step = self._dae_round(strategy, round_number, model, ema, optimizer, global_step)
            if self.config.stop_after_round == round_number:
                raise SimulatedKill(f"stop-after-round {round_number}")
        if not self.files.checkpoint.exists():  # zero rounds: keep the initial model as the global one
            self.files.save_checkpoint(model, ema, optimizer, 0, {"round": 0, "global_step": 0})
        return model, ema

    def _initial_dae(self, strategy):
        """(model, ema, last round done, global step): from the checkpoint when resuming, else new."""
        from ndae.model import EMA, build_model

        cfg = self.dae_config
        saved = self.files.load_checkpoint() if self.config.resume else None
        if saved is None:
            model = build_model(cfg, seed=cfg.train.seed)
            return model, EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup), 0, 0
        checkpoint, federation = saved
        if checkpoint.config.to_dict() != cfg.to_dict():
            raise FederationError(f"{self.files.checkpoint} was trained with a different DAE config; use a new "
                                  "run-dir or resume=false")
        start, global_step = int(federation.get("round", 0)), int(federation.get("global_step", 0))
        self.state.participation.update(federation.get("participation", {}))
        self.state.missing.extend(federation.get("missing", []))
        load_strategy_state(strategy, federation.get("strategy", {}))
        self.log(f"resuming federated DAE training after round {start} ({self.files.checkpoint})")
        return checkpoint.model, checkpoint.ema, start, global_step

    def _dae_round(self, strategy, round_number: int, model, ema, optimizer, global_step: int) -> int:
        """One training round: send the global weights, aggregate the answers into `model` and
        `ema`, log and checkpoint; returns the new global step."""
        t = time.time()
        sites_by_node = dict(self.state.sites)
        train_config = ConfigRecord({"local-epochs": self.config.local_epochs, "seed": self.config.seed,
                                     "ema-step": global_step, "dae-config": json.dumps(self.dae_config.to_dict())})
        messages = [m for m in strategy.configure_train(round_number, dae_to_record(model, ema), train_config,
                                                        self.grid) if m.metadata.dst_node_id in sites_by_node]
        sent = [m.metadata.dst_node_id for m in messages]
        replies = self.messenger.send(messages)
        result = self.messenger.collect("train", sent, replies, round_number)
        # Sum in site order: the same replies always give the same bits (resume is exact).
        by_site = {sites_by_node[r.metadata.src_node_id]: r for r in replies if not r.has_error()}
        aggregated, metrics = strategy.aggregate_train(round_number, [by_site[s] for s in sorted(result.replies)])
        if aggregated is None:
            raise FederationError(f"round {round_number}: aggregation gave no weights")
        record_to_dae(aggregated, model, ema)
        global_step += max(int(c["metrics"]["local-steps"]) for c in result.replies.values())
        ema.step = global_step
        for site in result.replies:
            self.state.participation[site] = self.state.participation.get(site, 0) + 1
        # A private site keeps its training loss (not DP): only the weights and step count come back.
        losses = {s: float(c["metrics"]["train-loss"]) for s, c in result.replies.items()
                  if "train-loss" in c["metrics"]}
        mean_loss = float(metrics["train-loss"]) if metrics and "train-loss" in metrics else None
        self.files.append_metrics({
            "phase": "dae", "round": round_number, "sites": sorted(result.replies), "missing": result.missing,
            "train_loss": losses, "train_loss_mean": mean_loss,
            "num_examples": {s: int(c["metrics"]["num-examples"]) for s, c in result.replies.items()},
            "global_step": global_step, "seconds": round(time.time() - t, 3)})
        self.files.save_checkpoint(model, ema, optimizer, global_step, {
            "round": round_number, "global_step": global_step, "strategy": strategy_state(strategy),
            "participation": dict(self.state.participation), "missing": list(self.state.missing)})
        loss = f"loss {mean_loss:.4f}" if mean_loss is not None else "loss withheld"
        from ndae.progress import duration, eta

        # elapsed and ETA at this process's own rate (a resumed run counts from its first new round)
        if self._rounds_started is None:
            self._rounds_started = (t, round_number)
        first_time, first_round = self._rounds_started
        elapsed = time.time() - first_time
        left = eta(round_number - first_round + 1, self.config.rounds - first_round + 1, elapsed)
        self.log(f"round {round_number}/{self.config.rounds}: {loss} from {len(result.replies)} site(s) of "
                 f"{len(sites_by_node)}, checkpoint saved; elapsed {duration(elapsed)}"
                 + (f", ETA of training {duration(left)}" if left else ""))
        return global_step

    # ---- phase 2: the normative model -----------------------------------------------------------
    def phase_normative(self, ema) -> NormativeFit:
        from ndae.io import atomic_save_npz
        from ndae.normative import DesignSpec, NormativeModel, SufficientStats

        design = DesignSpec()
        from ndae.federation.server.latent_probe import INITIAL_WEIGHTS_KEY, initial_weights, latent_probe
        from ndae.federation.server.score_distributions import held_out_models, normative_request

        releases = self.releases
        content = RecordDict({"dae": ema_weights_record(ema), "config": ConfigRecord({
            "dae-config": json.dumps(self.dae_config.to_dict()), "design": json.dumps(design.to_dict()),
            **normative_request(releases.asks(HELD_OUT_CALIBRATION))})})  # + per-fold statistics
        if releases.asks(AGE_PROBE_INITIAL):  # the age probe's yardstick, in the same reply
            content[INITIAL_WEIGHTS_KEY] = initial_weights(self.dae_config)
        result = self.messenger.query("normative_stats", content)
        per_site = {s: record_to_arrays(c["stats"]) for s, c in result.replies.items()}
        stats = sum(SufficientStats.from_arrays(arrays) for arrays in per_site.values())
        stats, warnings = releases.fit_input("normative_stats", stats, per_site)  # noised sums -> valid fit input
        for line in warnings:
            self.log(f"[normative] warning: {line}")
        normative = NormativeModel.from_stats(stats, [f"z_sem_{k}" for k in range(stats.n_features)])
        normative.save(self.run_dir / "normative")
        held_out = held_out_models(result.replies, list(normative.feature_names),
                                   releases.withheld(HELD_OUT_CALIBRATION))
        probe = latent_probe(result.replies, releases.withheld(AGE_PROBE), releases.withheld(AGE_PROBE_INITIAL))
        self.log("[normative] age probe of z_sem: " + _probe_line(probe))
        atomic_save_npz(self.run_dir / "normative" / "sufficient_stats.npz", **stats.to_arrays())
        self.files.append_metrics({"phase": "normative", "sites": sorted(result.replies), "missing": result.missing,
                                   "n_controls": float(stats.n),
                                   "controls_by_site": {s: float(n) for s, n in zip(stats.site_names, stats.site_n)}})
        return NormativeFit(stats, normative, warnings, probe, held_out)

    # ---- privacy ledgers -------------------------------------------------------------------
    def _record_privacy(self, replies: dict[str, RecordDict]) -> None:
        """Private runs: each answering site's ledger head and epsilon -> privacy/heads.json."""
        self.releases.record_ledgers(self.run_dir, self.privacy_heads, replies, self.state.missing, self.log)


def _probe_line(probe: dict) -> str:
    def one(name: str) -> str:
        p = probe.get(name, {})
        return f"{name} r {p['r']:.2f}" if "r" in p else f"{name} not computed ({p.get('not_computed', '')})"
    return ", ".join(one(name) for name in ("trained", "init"))


def run_federation(grid, run_config: dict | FederationConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The ServerApp's body: run every phase and write the run directory."""
    config = run_config if isinstance(run_config, FederationConfig) else FederationConfig.from_run_config(run_config)
    return Federation(grid, config, log).run()
