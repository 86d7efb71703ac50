"""What one hospital computes. The ClientApp calls these functions and nothing else.

Each function takes the site's own data plus what the server sent (weights, a normative model,
a Cox coefficient vector) and returns only what may leave the site: DAE weights and counts,
summable sufficient statistics, Cox gradient/Hessian terms, or (pooled survival mode only) the
patients' deviation scores with their covariates and follow-up. What a private run may send of
these, and in what form, is decided by `site_policy` and done by `site_privacy`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ndae.errors import NdaeError

_SITE_CACHE: dict[tuple[str, float, str], "SiteData"] = {}
_IGNORED_REQUESTS: set[str] = set()  # run-config cache-dirs already warned about (once per process)


@dataclass
class SiteData:
    name: str
    manifest_path: Path
    data: Any  # ndae.data.dataset.SliceDataset (images, masks, ages, sexes, subjects, ...)

    @property
    def controls(self) -> np.ndarray:
        return np.asarray(self.data.groups) == "control"

    @property
    def patients(self) -> np.ndarray:
        return np.asarray(self.data.groups) == "als"


# ---- data -------------------------------------------------------------------------------------
def site_manifest_path(node_config: Mapping[str, Any], cohort_dir: str = "") -> Path:
    """The site's manifest: node config `manifest` (deployment), else in simulation the
    `partition-id`-th site folder of `cohort_dir/sites/` (sorted by name)."""
    if node_config.get("manifest"):
        return Path(str(node_config["manifest"])).expanduser()
    if "partition-id" in node_config and cohort_dir:
        if not (Path(cohort_dir) / "sites").is_dir():
            raise NdaeError(f"run config cohort-dir {cohort_dir!r} has no sites/ folder (a cohort from `ndae cohort`)")
        sites = sorted(p.name for p in (Path(cohort_dir) / "sites").iterdir() if (p / "manifest.csv").exists())
        try:
            index = int(node_config["partition-id"])
        except (TypeError, ValueError):
            raise NdaeError(f"node config partition-id {node_config['partition-id']!r} is not a whole number") from None
        if index >= len(sites):
            raise NdaeError(f"simulated node {index} has no site: {cohort_dir}/sites holds {len(sites)} sites {sites}; "
                            "run with num-supernodes equal to the number of sites")
        return Path(cohort_dir) / "sites" / sites[index] / "manifest.csv"
    raise NdaeError("this SuperNode has no 'manifest' in its node config (flower-supernode --node-config "
                    "\"manifest='/path/to/site/manifest.csv'\"), and no simulation cohort-dir was given")


def site_cache_dir(node_config: Mapping[str, Any], manifest_path: str | Path, requested: str = "") -> Path:
    """Where this site keeps its prepared subjects. The site decides, never the server:

    - node config `cache-dir`: that folder (what `ndae prepare --manifest M --out DIR` wrote);
    - else a SuperNode whose node config names its `manifest` (a real site): the manifest's own
      cache, where `ndae prepare --manifest M` wrote (`ndae.data.cache.default_cache_dir`). The
      run config's `cache-dir` (`requested`) is ignored there: the server may not choose where a
      hospital writes;
    - else (a simulated node: Flower's node config holds only `partition-id`, and whoever writes
      the run config owns every node) `requested/<key of the manifest>`, or the manifest's cache.
    """
    from ndae.data.cache import default_cache_dir

    manifest_path = Path(manifest_path).resolve()
    own = str(node_config.get("cache-dir", "") or "").strip()
    if own:
        return Path(own).expanduser()
    if node_config.get("manifest"):
        if requested and requested not in _IGNORED_REQUESTS:
            _IGNORED_REQUESTS.add(requested)
            logging.getLogger("ndae.site").warning(
                "run config cache-dir=%r ignored: a site's cache is its node config's cache-dir, else its "
                "manifest's default (%s)", requested, default_cache_dir(manifest_path))
        return default_cache_dir(manifest_path)
    if requested:
        return Path(requested).expanduser() / hashlib.sha256(str(manifest_path).encode()).hexdigest()[:12]
    return default_cache_dir(manifest_path)


def load_site(manifest_path: str | Path, cache_dir: str = "", *, prepared_dir: str | Path | None = None) -> SiteData:
    """The site's prepared slices (memoised per process: every phase reads the same data), from
    `prepared_dir` (what `site_cache_dir` chose), else `cache_dir/<key of the manifest>` when a
    cache root is given, else the manifest's default cache."""
    from ndae.data.dataset import load_slice_dataset

    path = Path(manifest_path).resolve()
    if not path.is_file():
        raise NdaeError(f"site manifest {path} does not exist" if not path.exists()
                        else f"site manifest {path} is not a regular file")
    if prepared_dir is None:
        prepared_dir = site_cache_dir({}, path, cache_dir)
    key = (str(path), path.stat().st_mtime, str(prepared_dir))
    if key not in _SITE_CACHE:
        data = load_slice_dataset(path, Path(prepared_dir), progress=False)
        names = sorted({str(s) for s in np.asarray(data.sites)})
        if len(names) != 1:
            raise NdaeError(f"{path}: a site's manifest must name exactly one site, found {names}")
        _SITE_CACHE[key] = SiteData(names[0], path, data)
    return _SITE_CACHE[key]


def site_info(site: SiteData) -> dict[str, Any]:
    images = site.data.images
    return {"site": site.name, "controls": int(site.controls.sum()), "patients": int(site.patients.sum()),
            "channels": int(images.shape[1]), "height": int(images.shape[2]), "width": int(images.shape[3])}


def check_fault(config, site_name: str, phase: str, round_number: int = 0) -> None:
    """Test hook: the configured site raises in the configured phase (and training round)."""
    if config.fault_site == site_name and config.fault_phase == phase and (
            phase != "train" or config.fault_round in (0, round_number)):
        raise RuntimeError(f"injected fault at site {site_name!r} in phase {phase!r}"
                           + (f" round {round_number}" if phase == "train" else ""))


# ---- the DAE ----------------------------------------------------------------------------------
def resolve_device(name: str):
    from ndae.model.run import resolve_device as resolve

    return resolve(name)


def build_dae(dae_config: dict, device="cpu"):
    """Model and EMA for a DAE config dict (weights are loaded from a message afterwards)."""
    from ndae.model import EMA, DAEConfig, build_model

    cfg = DAEConfig.from_dict(dae_config)
    import torch

    with torch.random.fork_rng(devices=[]):  # build_model seeds torch's global generator: leave it as it was
        model = build_model(cfg, seed=0, device=device)
    return model, EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)


def local_steps(n_controls: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps in `epochs` passes over n controls (batch_iterator drops the last partial batch)."""
    if n_controls == 0:
        return 0
    return epochs * max(1, n_controls // min(batch_size, n_controls))


def site_seed(seed: int, round_number: int, site_name: str) -> int:
    """A seed for one NON-private site round: the same (seed, round, site) gives the same draws,
    so plain runs repeat and resume exactly. Never used for privacy: the server knows all three
    (private rounds draw from the site's CSPRNG, `ndae.privacy.randomness`)."""
    return (seed * 1_000_003 + round_number * 7919 + zlib.crc32(site_name.encode())) % 2**31


def start_local_round(site: SiteData, weights, dae_config: dict, ema_step: int, device: str = "auto",
                      canaries=None):
    """A fresh local DAE holding the global weights, and the site's training images.

    Returns (model, ema, images, ages): the controls, plus the included canaries when the site
    audits the run (`canaries`, an ndae.privacy.canaries.CanarySet); ages are None unless the DAE
    is age-conditioned. Plain and DP-SGD rounds both start here, so both train on the same records.
    """
    from ndae.federation.records import record_to_dae
    from ndae.model import prepare_images

    model, ema = build_dae(dae_config, resolve_device(device))
    record_to_dae(weights, model, ema)
    ema.step = int(ema_step)
    control = site.controls
    if not control.any():
        raise NdaeError(f"site {site.name!r} has no controls to train on")
    images = site.data.images[control]
    ages = np.asarray(site.data.ages, np.float32)[control]
    if canaries is not None and canaries.count:
        canary_images, canary_ages = canaries.training_images()
        if canary_images.shape[1:] != images.shape[1:]:
            raise NdaeError(f"site {site.name!r}: canaries of shape {canary_images.shape[1:]} do not match "
                            f"the slices {images.shape[1:]}")
        images = np.concatenate([images, canary_images.astype(images.dtype)])
        ages = np.concatenate([ages, canary_ages])
    x = prepare_images(images, model.config)
    return model, ema, x, (ages if model.config.model.age_conditioned else None)


def train_round(site: SiteData, weights, dae_config: dict, *, round_number: int, epochs: int, seed: int,
                ema_step: int, proximal_mu: float = 0.0, device: str = "auto", canaries=None):
    """E local epochs of DAE training from the global weights; returns (weights record, metrics).

    Stateless between rounds (a fresh Adam each round), so a round depends only on the global
    weights, the site's data and (seed, round, site): what makes server-side resume exact.
    """
    import torch

    from ndae.federation.records import dae_to_record
    from ndae.model import batch_iterator, make_optimizer, train_steps

    model, ema, x, ages = start_local_round(site, weights, dae_config, ema_step, device, canaries)
    cfg, n = model.config, int(x.shape[0])
    local_seed = site_seed(seed, round_number, site.name)
    generator = torch.Generator().manual_seed(local_seed)
    batches = batch_iterator(x, ages, cfg.train.batch_size, torch.Generator().manual_seed(local_seed + 1),
                             cfg.train.flip_augment)
    optimizer = make_optimizer(model, cfg)
    hooks = []
    if proximal_mu > 0:
        # FedProx: the gradient of mu/2 ||w - w_global||^2, added to every parameter's gradient.
        for parameter in model.parameters():
            anchor = parameter.detach().clone()
            hooks.append(parameter.register_hook(lambda g, p=parameter, a=anchor: g + proximal_mu * (p.detach() - a)))
    steps = local_steps(n, cfg.train.batch_size, epochs)
    try:
        losses = train_steps(model, ema, optimizer, batches, steps, generator=generator,
                             grad_clip=cfg.train.grad_clip, amp=cfg.train.amp)
    finally:
        for hook in hooks:
            hook.remove()
    metrics = {"num-examples": n, "train-loss": float(np.mean(losses)), "local-steps": steps}
    return dae_to_record(model, ema), metrics


def encode_z_sem(site: SiteData, weights, dae_config: dict, rows: np.ndarray, device: str = "auto") -> np.ndarray:
    """z_sem (float64) of the selected subjects with the global EMA weights."""
    from ndae.federation.records import record_to_dae
    from ndae.model import encode

    model, ema = build_dae(dae_config, resolve_device(device))
    record_to_dae(weights, model, ema)
    d = model.config.model.z_sem_dim
    if not rows.any():
        return np.zeros((0, d))
    return encode(ema.model, site.data.images[rows]).numpy().astype(np.float64)


def covariates(site: SiteData, rows: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"subject": np.asarray(site.data.subjects)[rows].astype(str),
                         "site": np.asarray(site.data.sites)[rows].astype(str),
                         "age": np.asarray(site.data.ages, float)[rows],
                         "sex": np.asarray(site.data.sexes)[rows].astype(str)})


# ---- normative moments ------------------------------------------------------------------------
def normative_statistics(site: SiteData, weights, dae_config: dict, design: dict, device: str = "auto") -> dict:
    """The controls' summable sufficient statistics of z_sem (no row leaves the site)."""
    from ndae.normative import DesignSpec, SufficientStats

    rows = site.controls
    z_sem = encode_z_sem(site, weights, dae_config, rows, device)
    stats = SufficientStats.from_data(covariates(site, rows), z_sem, DesignSpec.from_dict(design), site_column="site")
    return stats.to_arrays()


# ---- deviations and survival ------------------------------------------------------------------
def patient_survival_table(site: SiteData, weights, dae_config: dict, normative, features: list[str],
                           device: str = "auto") -> pd.DataFrame:
    """The site's patients: subject, site, age, sex_female, time, event and their deviation scores."""
    from ndae.deviation.scores import deviation_table
    from ndae.survival.analysis import patient_table

    rows = site.patients
    columns = ["subject", "site", "age", "sex_female", "time", "event", *features]
    if not rows.any():
        return pd.DataFrame({c: pd.Series(dtype=str if c in ("subject", "site") else float) for c in columns})
    z_sem = encode_z_sem(site, weights, dae_config, rows, device)
    table = deviation_table(covariates(site, rows)["subject"], covariates(site, rows), z_sem, normative)
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise NdaeError(f"survival-features {missing} are not deviation scores; available: {list(table.columns[1:])}")
    scores = [c for c in table.columns if c != "subject"]  # every score travels (deviations.csv); Cox uses `features`
    survival, _ = patient_table(table, site.data.manifest, scores, source=str(site.manifest_path))
    bad = survival["time"].isna() | survival["event"].isna()
    if bad.any():
        raise NdaeError(f"{site.manifest_path}: patients without time/event: {survival.loc[bad, 'subject'].tolist()[:5]}")
    return survival[[*columns[:6], *scores]].reset_index(drop=True)


def covariate_moments(table: pd.DataFrame, covariate_names: list[str]) -> dict:
    from ndae.survival.federated_cox import site_covariate_moments

    return site_covariate_moments(table, covariate_names)


def cox_terms(table: pd.DataFrame, beta: np.ndarray, covariate_names: list[str]) -> dict:
    from ndae.survival.federated_cox import site_partial_likelihood_terms

    return site_partial_likelihood_terms(table, beta, covariate_names)


def concordance_counts(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    """Harrell's pair counts within the site, from scikit-survival (its convention: a pair is
    comparable when the earlier time is an event, a censoring at the same time counts as later;
    ties in risk count half). Summed over sites they give the within-site C-index."""
    from sksurv.metrics import concordance_index_censored

    time, risk = np.asarray(time, float), np.asarray(risk, float)
    event = np.asarray(event, float) > 0
    if not event.any():  # scikit-survival refuses a sample without events: no comparable pair
        return {"comparable": 0.0, "concordant": 0.0}
    _, concordant, discordant, tied_risk, _ = concordance_index_censored(event, time, risk)
    return {"comparable": float(concordant + discordant + tied_risk), "concordant": float(concordant + 0.5 * tied_risk)}


def risk_summary(table: pd.DataFrame, beta: np.ndarray, covariate_names: list[str],
                 reference: tuple[np.ndarray, list[str]] | None = None) -> dict[str, np.ndarray]:
    """Aggregates for the report, computed on the site's rows: concordance pair counts and the
    Kaplan–Meier counts (events / censored per month) by within-site tertile of x·beta.

    With a `reference` model (β, covariates; the covariates-only Cox model) also the paired
    concordance aggregates of both risks on the same pairs (`ndae.federation.paired_concordance`):
    `paired_sums` (3) and `paired_cross` (3 × 3), sums over patients, never a patient's own value."""
    from ndae.federation.paired_concordance import site_aggregates
    from ndae.survival.kaplan_meier import tertile_groups

    if len(table) == 0:
        empty = {"comparable": np.asarray(0.0), "concordant": np.asarray(0.0), "km": np.zeros((0, 4))}
        if reference is not None:
            empty.update(paired_sums=np.zeros(3), paired_cross=np.zeros((3, 3)))
        return empty
    risk = table[covariate_names].to_numpy(float) @ np.asarray(beta, float)
    counts = concordance_counts(table["time"], table["event"], risk)
    paired = {}
    if reference is not None:
        reference_beta, reference_covariates = reference
        reference_risk = table[reference_covariates].to_numpy(float) @ np.asarray(reference_beta, float)
        aggregates = site_aggregates(table["time"], table["event"], risk, reference_risk)
        paired = {"paired_sums": aggregates["sums"], "paired_cross": aggregates["cross"]}
    rows = []
    if len(table) >= 3:
        groups = tertile_groups(pd.Series(risk)).map({"low": 0, "middle": 1, "high": 2}).to_numpy()
        month = np.ceil(table["time"].to_numpy(float))  # whole months: no exact dates leave the site
        frame = pd.DataFrame({"group": groups, "month": month, "event": table["event"].to_numpy(float)})
        for (group, time, event), count in frame.groupby(["group", "month", "event"]).size().items():
            rows.append((group, time, event, count))
    return {"comparable": np.asarray(counts["comparable"]), "concordant": np.asarray(counts["concordant"]),
            "km": np.asarray(rows, dtype=np.float64).reshape(-1, 4), **paired}


def is_finite_number(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
