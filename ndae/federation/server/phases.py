"""The phases of one federated run, driven by the ServerApp (`run_federation(grid, config)`).

0. site_info: who is there (site name, counts, slice shape), from each node's own manifest.
1. DAE: R rounds of FedAvg / FedAdam / FedProx (Flower's strategies) over the sites' controls;
   the global model (+ EMA) is checkpointed after every round and a restarted server resumes
   from the last checkpoint (`resume`).
2. normative: sites send the controls' sufficient statistics of z_sem; the server sums them
   (in site order), fits the normative model and saves it.
3. deviations: sites score their patients against the normative model; `pooled` survival has
   them send the de-identified rows; `federated` keeps every row at the site and fits the Cox
   model by Newton rounds of summed gradients/Hessians.
4. report: `report.md`, `survival/`, `metrics.jsonl`, `status.json`.

A site that fails or does not answer within `round-timeout` is left out of that phase (and
named in the report); the run goes on while at least `min-sites` answer, else it fails with
`FederationError` and `status.json` says so.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from ndae.errors import NdaeError
from ndae.federation.config import FederationConfig
from ndae.federation.records import (
    arrays_to_record, dae_to_record, frame_to_record, normative_to_config, record_to_arrays, record_to_dae,
    record_to_frame,
)
from ndae.io import atomic_write_json, atomic_write_text

CHECKPOINT = Path("dae") / "checkpoint.pt"
CLINICAL = ("age", "sex_female")


class FederationError(NdaeError):
    """The federated run cannot go on (too few sites answered, inconsistent sites, ...)."""


class SimulatedKill(Exception):
    """Raised by the `stop-after-round` test hook, as if the server had been killed."""


@dataclass
class PhaseResult:
    replies: dict[str, RecordDict]  # site -> reply content
    missing: dict[str, str]  # site -> reason


@dataclass
class RunState:
    sites: dict[int, str] = field(default_factory=dict)  # node id -> site name
    info: dict[str, dict] = field(default_factory=dict)  # site -> site_info
    missing: list[dict] = field(default_factory=list)  # {"phase", "round", "site", "reason"}
    participation: dict[str, int] = field(default_factory=dict)  # site -> training rounds answered


def make_strategy(config: FederationConfig):
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

    common = dict(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    if config.strategy == "fedadam":
        return FedAdam(eta=config.server_learning_rate, eta_l=config.server_learning_rate, **common)
    if config.strategy == "fedprox":
        return FedProx(proximal_mu=config.proximal_mu, **common)
    return FedAvg(**common)


def dae_config_for(config: FederationConfig, channels: int):
    from ndae.model import preset

    cfg = preset(config.dae_preset).with_data_shape(channels)
    if config.batch_size:
        cfg.train.batch_size = int(config.batch_size)
    if config.learning_rate:
        cfg.train.learning_rate = float(config.learning_rate)
    cfg.train.seed = int(config.seed)
    return cfg


class Federation:
    """One federated run over a Flower `Grid` (real, simulated, or `InProcessGrid`)."""

    def __init__(self, grid, config: FederationConfig, log: Callable[[str], None] = print):
        from dataclasses import replace

        config = replace(config, survival_mode=config.effective_survival_mode)  # auto -> pooled / federated
        self.grid, self.config, self.log = grid, config, log
        self.run_dir = Path(config.run_dir).expanduser().resolve()
        self.state = RunState()
        self.privacy_heads: dict[str, dict] = {}  # site -> its ledger head, epsilon (private runs)
        self.timings: dict[str, float] = {}

    # ---- messaging -------------------------------------------------------------------------
    def _send(self, messages: list[Message]) -> list[Message]:
        return list(self.grid.send_and_receive(messages, timeout=self.config.round_timeout))

    def _split(self, phase: str, sent: Iterable[int], replies: list[Message], round_number: int = 0) -> PhaseResult:
        ok, missing = {}, {}
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            site = self.state.sites.get(node, f"node-{node}")
            answered.add(node)
            if reply.has_error():
                missing[site] = f"error: {reply.error.reason}"
            else:
                ok[site] = reply.content
        for node in sent:
            if node not in answered:
                missing[self.state.sites.get(node, f"node-{node}")] = f"no reply within {self.config.round_timeout:g} s"
        for site, reason in sorted(missing.items()):
            self.state.missing.append({"phase": phase, "round": round_number, "site": site, "reason": reason[:500]})
            self.log(f"[{phase}{' round ' + str(round_number) if round_number else ''}] site {site} left out: {reason[:200]}")
        self._record_privacy(ok)  # releases that reached us count, even if the phase fails below
        if len(ok) < self.config.min_sites:
            raise FederationError(
                f"phase {phase}{' round ' + str(round_number) if round_number else ''}: {len(ok)} site(s) answered "
                f"({sorted(ok)}), fewer than min-sites = {self.config.min_sites}; missing: {missing}")
        return PhaseResult(dict(sorted(ok.items())), missing)

    def _query(self, phase: str, content: Callable[[str], RecordDict] | RecordDict) -> PhaseResult:
        nodes = sorted(self.state.sites, key=lambda n: self.state.sites[n])
        messages = [Message(content(self.state.sites[n]) if callable(content) else content, dst_node_id=n,
                            message_type=f"query.{phase}") for n in nodes]
        return self._split(phase, nodes, self._send(messages))

    # ---- run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config.privacy:
            from ndae.federation.server.privacy import load_heads

            self.privacy_heads = load_heads(self.run_dir)  # a resumed run keeps the heads it had
        self._status("running")
        try:
            summary = self._run()
        except SimulatedKill:
            self._status("stopped", "stopped by stop-after-round (test hook)")
            raise
        except BaseException as error:
            self._status("failed", f"{type(error).__name__}: {error}")
            from ndae.federation.server.report import write_failure_report

            write_failure_report(self.run_dir, self.config, f"{type(error).__name__}: {error}", self.state.missing)
            raise
        self._status("completed")
        return summary

    def _status(self, status: str, error: str | None = None) -> None:
        atomic_write_json(self.run_dir / "status.json", {"status": status, "error": error, "time": time.time(),
                                                         "missing": self.state.missing})

    def _run(self) -> dict[str, Any]:
        started = time.time()
        self.phase_site_info()
        channels = {info["channels"] for info in self.state.info.values()}
        if len(channels) != 1:
            raise FederationError(f"sites prepare different numbers of slices: {self.state.info}")
        self.dae_config = dae_config_for(self.config, channels.pop())
        atomic_write_json(self.run_dir / "config.json", {
            "federation": self.config.to_dict(), "dae": self.dae_config.to_dict(),
            "sites": self.state.info})
        t = time.time()
        model, ema = self.phase_dae()
        self.timings["dae_training_s"] = time.time() - t
        t = time.time()
        stats, normative = self.phase_normative(ema)
        self.timings["normative_s"] = time.time() - t
        t = time.time()
        survival = self.phase_survival(ema, normative)
        self.timings["survival_s"] = time.time() - t
        self.timings["total_s"] = time.time() - started
        from ndae.federation.server.report import write_report

        summary = {"sites": self.state.info, "missing": self.state.missing, "timings": self.timings,
                   "normative": {"n_controls": float(stats.n), "sites": list(stats.site_names),
                                 "warnings": self.moments_warnings},
                   "survival": survival, "participation": self.state.participation}
        if self.config.privacy:
            summary["privacy"] = self.privacy_heads
        write_report(self.run_dir, self.config, summary, self._metrics())
        atomic_write_json(self.run_dir / "summary.json", summary)
        return summary

    # ---- phase 0 ---------------------------------------------------------------------------
    def phase_site_info(self) -> None:
        deadline = time.time() + self.config.round_timeout
        while len(list(self.grid.get_node_ids())) < self.config.min_sites and time.time() < deadline:
            time.sleep(1.0)  # deployment: SuperNodes may still be connecting
        nodes = sorted(self.grid.get_node_ids())
        messages = [Message(RecordDict(), dst_node_id=n, message_type="query.site_info") for n in nodes]
        replies = self._send(messages)
        for reply in replies:
            if not reply.has_error():
                site = str(reply.content["info"]["site"])
                if site in self.state.sites.values():
                    raise FederationError(f"two nodes claim site {site!r}: every site needs its own manifest")
                self.state.sites[reply.metadata.src_node_id] = site
        result = self._split("site_info", nodes, replies)
        self.state.info = {site: dict(content["info"]) for site, content in result.replies.items()}
        self.state.participation = {site: 0 for site in self.state.info}
        described = [f"{s} ({i['controls']} controls, {i['patients']} patients)" if int(i["controls"]) >= 0
                     else f"{s} (counts withheld by its policy)" for s, i in self.state.info.items()]
        self.log("sites: " + ", ".join(described))

    # ---- phase 1 ---------------------------------------------------------------------------
    def phase_dae(self):
        import torch

        from ndae.model import EMA, build_model, load_checkpoint, make_optimizer, save_checkpoint

        cfg = self.dae_config
        checkpoint = self.run_dir / CHECKPOINT
        strategy = make_strategy(self.config)
        start, global_step = 0, 0
        if self.config.resume and checkpoint.exists():
            saved = load_checkpoint(checkpoint)
            federation = saved.extra.get("federation", {})
            if saved.config.to_dict() != cfg.to_dict():
                raise FederationError(f"{checkpoint} was trained with a different DAE config; use a new run-dir "
                                      "or resume=false")
            model, ema = saved.model, saved.ema
            start, global_step = int(federation.get("round", 0)), int(federation.get("global_step", 0))
            self.state.participation.update(federation.get("participation", {}))
            self.state.missing.extend(federation.get("missing", []))
            _load_strategy_state(strategy, federation.get("strategy", {}))
            self.log(f"resuming federated DAE training after round {start} ({checkpoint})")
        else:
            model = build_model(cfg, seed=cfg.train.seed)
            ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)
        self._truncate_metrics(start)
        optimizer = make_optimizer(model, cfg)  # the server takes no local steps; kept for the checkpoint format
        dae_json = json.dumps(cfg.to_dict())
        sites_by_node = dict(self.state.sites)
        for round_number in range(start + 1, self.config.rounds + 1):
            t = time.time()
            train_config = ConfigRecord({"local-epochs": self.config.local_epochs, "seed": self.config.seed,
                                         "ema-step": global_step, "dae-config": dae_json})
            messages = [m for m in strategy.configure_train(round_number, dae_to_record(model, ema), train_config,
                                                            self.grid) if m.metadata.dst_node_id in sites_by_node]
            sent = [m.metadata.dst_node_id for m in messages]
            replies = self._send(messages)
            result = self._split("train", sent, replies, round_number)
            # Sum in site order: the same replies always give the same bits (resume is exact).
            by_site = {sites_by_node[r.metadata.src_node_id]: r for r in replies if not r.has_error()}
            ordered = [by_site[s] for s in sorted(result.replies)]
            aggregated, metrics = strategy.aggregate_train(round_number, ordered)
            if aggregated is None:
                raise FederationError(f"round {round_number}: aggregation gave no weights")
            record_to_dae(aggregated, model, ema)
            steps = [int(c["metrics"]["local-steps"]) for c in result.replies.values()]
            global_step += max(steps)
            ema.step = global_step
            for site in result.replies:
                self.state.participation[site] = self.state.participation.get(site, 0) + 1
            # A private site keeps its training loss (not DP): only the weights and step count come back.
            losses = {s: float(c["metrics"]["train-loss"]) for s, c in result.replies.items()
                      if "train-loss" in c["metrics"]}
            self._append_metrics({"phase": "dae", "round": round_number, "sites": sorted(result.replies),
                                  "missing": result.missing, "train_loss": losses,
                                  "train_loss_mean": float(metrics["train-loss"]) if metrics and "train-loss" in metrics
                                  else None,
                                  "num_examples": {s: int(c["metrics"]["num-examples"]) for s, c in result.replies.items()},
                                  "global_step": global_step, "seconds": round(time.time() - t, 3)})
            save_checkpoint(checkpoint, model, ema, optimizer, global_step, extra={"federation": {
                "round": round_number, "global_step": global_step, "strategy": _strategy_state(strategy),
                "participation": dict(self.state.participation), "missing": list(self.state.missing)}})
            loss = f"loss {float(metrics['train-loss']):.4f}" if metrics and "train-loss" in metrics else "loss withheld"
            self.log(f"round {round_number}/{self.config.rounds}: {loss} from {len(result.replies)} site(s), "
                     "checkpoint saved")
            if self.config.stop_after_round == round_number:
                raise SimulatedKill(f"stop-after-round {round_number}")
        if not checkpoint.exists():  # zero rounds: keep the initial model as the global one
            save_checkpoint(checkpoint, model, ema, optimizer, 0, extra={"federation": {"round": 0, "global_step": 0}})
        del torch
        return model, ema

    # ---- phase 2 ---------------------------------------------------------------------------
    def phase_normative(self, ema):
        from ndae.model import EMA  # noqa: F401  (ema is an EMA)
        from ndae.normative import DesignSpec, NormativeModel, SufficientStats

        weights = _ema_record(ema)
        design = DesignSpec()
        content = RecordDict({"dae": weights, "config": ConfigRecord({
            "dae-config": json.dumps(self.dae_config.to_dict()), "design": json.dumps(design.to_dict())})})
        result = self._query("normative_stats", content)
        stats = sum(SufficientStats.from_arrays(record_to_arrays(c["stats"])) for c in result.replies.values())
        self.moments_warnings: list[str] = []
        if self.config.privacy and self.config.moments_noise_multiplier > 0:  # noised sums -> valid fit input
            from ndae.privacy.dp_moments import moments_noise_warnings, postprocess_noisy_stats

            self.moments_warnings = moments_noise_warnings(
                {s: record_to_arrays(c["stats"]) for s, c in result.replies.items()})
            for line in self.moments_warnings:
                self.log(f"[normative] warning: {line}")
            stats = postprocess_noisy_stats(stats)
        feature_names = [f"z_sem_{k}" for k in range(stats.n_features)]
        normative = NormativeModel.from_stats(stats, feature_names)
        normative.save(self.run_dir / "normative")
        from ndae.io import atomic_save_npz

        atomic_save_npz(self.run_dir / "normative" / "sufficient_stats.npz", **stats.to_arrays())
        self._append_metrics({"phase": "normative", "sites": sorted(result.replies), "missing": result.missing,
                              "n_controls": float(stats.n),
                              "controls_by_site": {s: float(n) for s, n in zip(stats.site_names, stats.site_n)}})
        self.normative_sites = sorted(result.replies)
        return stats, normative

    # ---- phase 3 ---------------------------------------------------------------------------
    def phase_survival(self, ema, normative) -> dict[str, Any]:
        config = self.config
        features = config.features
        pooled = config.survival_mode == "pooled"
        content = RecordDict({"dae": _ema_record(ema), "normative": normative_to_config(normative),
                              "config": ConfigRecord({"dae-config": json.dumps(self.dae_config.to_dict()),
                                                      "features": features, "share-rows": pooled})})
        result = self._query("deviations", content)
        # Private sites send counts only where their policy declares them public.
        counts = {s: {k: int(v) for k, v in c["counts"].items()} for s, c in result.replies.items() if "counts" in c}
        candidates = [*features, *CLINICAL]
        covariates = candidates
        moments = {s: record_to_arrays(c["moments"]) for s, c in result.replies.items() if "moments" in c}
        if moments:  # non-private runs: which clinical covariates vary across all answering sites
            n = sum(float(m["n"]) for m in moments.values())
            if n < 2:
                raise FederationError(f"survival: {n:g} patients with deviation scores across sites {sorted(moments)}")
            total = sum(m["sum"] for m in moments.values())
            squares = sum(m["sum_of_squares"] for m in moments.values())
            variance = (squares - total**2 / n) / (n - 1)
            constant = [c for c, v in zip(candidates, variance) if not v > 1e-12]
            if any(c in features for c in constant):
                raise FederationError(f"survival: deviation score(s) {constant} are constant across patients")
            covariates = [c for c in candidates if c not in constant]
        sites_with_patients = [s for s in result.replies if s not in counts or counts[s]["patients"] > 0]
        survival: dict[str, Any] = {"mode": config.survival_mode, "covariates": covariates, "counts": counts,
                                    "features": features}
        out = self.run_dir / "survival"
        from ndae.federation.server import report

        if pooled:
            tables = [record_to_frame(result.replies[s]["rows"]) for s in sites_with_patients]
            table = pd.concat(tables, ignore_index=True)
            for column in ("age", "sex_female", "time", "event", *features):
                table[column] = table[column].astype(float)
            score_columns = [c for c in table.columns if c not in ("site", "age", "sex_female", "time", "event")]
            atomic_write_text(self.run_dir / "deviations.csv",
                              table[score_columns].to_csv(index=False, lineterminator="\n", float_format="%.10g"))
            cox = report.fit_pooled_cox(table, covariates)
            report.save_pooled_cox(out, cox, covariates)
            beta = cox.params_.reindex(covariates).to_numpy()
            survival["coef"] = dict(zip(covariates, beta.tolist()))
            survival["se"] = dict(zip(covariates, cox.standard_errors_.reindex(covariates).tolist()))
            survival["pooled_table"] = table
        else:
            beta, fitter = self._federated_cox(sites_with_patients, covariates)
            report.save_federated_cox(out, fitter, covariates)
            survival["coef"] = dict(zip(covariates, beta.tolist()))
            survival["se"] = dict(zip(covariates, fitter.standard_errors_.tolist()))
            survival["newton_message_rounds"] = int(fitter.n_rounds_)
            survival["sites_in_cox"] = sorted(fitter.sites_)
        # Within-site concordance and KM counts: the same aggregate query in both modes.
        beta_content = self._beta_content(beta, covariates)
        summary = self._query_subset("risk_summary", sites_with_patients, beta_content)
        comparable = sum(float(c["summary"]["comparable"].numpy()) for c in summary.replies.values())
        concordant = sum(float(c["summary"]["concordant"].numpy()) for c in summary.replies.values())
        survival["c_index_within_site"] = concordant / comparable if comparable else float("nan")
        km_rows = np.concatenate([c["summary"]["km"].numpy().reshape(-1, 4) for c in summary.replies.values()]) \
            if summary.replies else np.zeros((0, 4))
        survival["km"] = report.km_from_counts(km_rows, out / "km_risk_within_site_tertiles.png")
        if pooled:
            survival.update(report.pooled_survival_extras(survival.pop("pooled_table"), beta, covariates, out))
        if len(counts) == len(result.replies):
            survival["patients"] = int(sum(c["patients"] for c in counts.values()))
            survival["events"] = int(sum(c["events"] for c in counts.values()))
        else:  # some site withheld its counts: no total is reported rather than a partial one
            survival["patients"] = survival["events"] = None
        atomic_write_json(out / "metrics.json", report.finite_or_null(survival))
        self._append_metrics({"phase": "survival", "mode": config.survival_mode, "sites": sorted(result.replies),
                              "missing": result.missing, "c_index_within_site": survival["c_index_within_site"],
                              "coef": survival["coef"]})
        return survival

    def _beta_content(self, beta: np.ndarray, covariates: list[str]) -> RecordDict:
        return RecordDict({"beta": arrays_to_record({"beta": np.asarray(beta, dtype=np.float64)}),
                           "config": ConfigRecord({"covariates": list(covariates)})})

    def _query_subset(self, phase: str, sites: list[str], content: RecordDict) -> PhaseResult:
        nodes = [n for n, s in sorted(self.state.sites.items(), key=lambda item: item[1]) if s in sites]
        messages = [Message(content, dst_node_id=n, message_type=f"query.{phase}") for n in nodes]
        return self._split(phase, nodes, self._send(messages))

    def _federated_cox(self, sites: list[str], covariates: list[str]):
        """Newton–Raphson where every likelihood evaluation is one message round to all sites.

        A site that fails mid-fit would change the likelihood being maximised, so it is dropped
        and the fit restarts without it."""
        from ndae.survival.federated_cox import FederatedCoxFitter

        active = list(sites)
        while True:
            cache: dict[bytes, dict[str, dict]] = {}
            failed: list[str] = []

            def terms_for(site: str):
                def terms(beta: np.ndarray) -> dict:
                    key = np.asarray(beta, dtype=np.float64).tobytes()
                    if key not in cache:
                        result = self._query_subset("cox_terms", active, self._beta_content(beta, covariates))
                        if result.missing:
                            failed.extend(result.missing)
                            raise _SiteDropped()
                        cache.clear()
                        cache[key] = {s: record_to_arrays(c["terms"]) for s, c in result.replies.items()}
                    return cache[key][site]
                return terms

            try:
                fitter = FederatedCoxFitter().fit({s: terms_for(s) for s in active}, covariates)
                return fitter.params_.to_numpy(), fitter
            except _SiteDropped:
                active = [s for s in active if s not in failed]
                self.log(f"federated Cox: restarting without {failed}")

    def _record_privacy(self, replies: dict[str, RecordDict]) -> None:
        """Private runs: each answering site's ledger head and epsilon -> privacy/heads.json."""
        if not self.config.privacy:
            return
        from ndae.federation.server.privacy import record_site_ledger

        for site, content in replies.items():
            if "privacy" not in content:
                continue
            claimed = str(content["privacy"].get("privacy-site", ""))
            if claimed != site:  # a node may only report its own ledger, never overwrite another's
                self.log(f"node of site {site!r} sent the ledger head of {claimed!r}: ignored")
                self.state.missing.append({"phase": "privacy", "round": 0, "site": site,
                                           "reason": f"sent the ledger head of site {claimed!r}: ignored"})
                continue
            record_site_ledger(self.run_dir, self.privacy_heads, content["privacy"])

    # ---- metrics.jsonl ----------------------------------------------------------------------
    def _metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def _append_metrics(self, entry: dict) -> None:
        from ndae.io import finite_or_null

        lines = self._metrics() + [finite_or_null({"time": round(time.time(), 3), **entry})]
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))

    def _truncate_metrics(self, last_round: int) -> None:
        kept = [x for x in self._metrics() if x.get("phase") == "dae" and x.get("round", 0) <= last_round]
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(x, sort_keys=True) + "\n" for x in kept))


class _SiteDropped(Exception):
    pass


def _ema_record(ema) -> ArrayRecord:
    """Both halves of the weights message: sites use the EMA half to encode."""
    return dae_to_record(ema.model, ema)


def _strategy_state(strategy) -> dict:
    import torch

    state = {}
    for name in ("m_t", "v_t"):
        value = getattr(strategy, name, None)
        if value:
            state[name] = {k: torch.as_tensor(np.asarray(v)) for k, v in value.items()}
    return state


def _load_strategy_state(strategy, state: dict) -> None:
    for name, value in state.items():
        setattr(strategy, name, {k: v.numpy() for k, v in value.items()})


def run_federation(grid, run_config: dict | FederationConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The ServerApp's body: run every phase and write the run directory."""
    config = run_config if isinstance(run_config, FederationConfig) else FederationConfig.from_run_config(run_config)
    return Federation(grid, config, log).run()


__all__ = ["Federation", "FederationError", "SimulatedKill", "run_federation", "MetricRecord"]
