"""Empirical privacy audit of a trained DAE: a membership-inference test on denoising loss.

Members are controls a site trained on; non-members are controls of the same population it did
not train on (held out before the run). The attack score is the NEGATIVE denoising loss of the
model (a model that memorised a record denoises it better), at fixed, seeded timesteps and noise
shared by every image, so members and non-members are scored by exactly the same draws. The
scores go to `empirical_epsilon_lower_bound` (Clopper–Pearson, Bonferroni over thresholds): a
(1 − alpha)-confidence LOWER bound on the epsilon of whatever produced the model. Under DP it must
stay below the accounted epsilon; with few records the bound is weak (it cannot exceed about
log(n) for n records per group), so 0 is the common answer on tiny cohorts, private or not.

This is the simple held-out test, not one-run auditing with inserted canaries (Steinke, Nasr &
Jagielski 2023), which needs the canaries to be included at random at training time.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ndae.errors import NdaeError


def denoising_scores(model, images, ages=None, *, seed: int = 0, draws: int = 8, batch_size: int = 32,
                     t_range: tuple[float, float] = (0.05, 0.6)) -> np.ndarray:
    """−(mean weighted ε-prediction error) per image over `draws` fixed (t, noise) draws.

    Draw k uses timestep t_k (evenly spaced over `t_range`, fractions of the schedule) and one
    noise image from a generator seeded by (seed, k), the same for every image scored."""
    import torch

    from ndae.model import prepare_images
    from ndae.model.dae import model_device, unwrap

    core = unwrap(model).eval()
    device = model_device(core)
    x = prepare_images(images, core.config)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0)
    diffusion = core.diffusion
    T = int(diffusion.timesteps)
    steps = np.linspace(t_range[0] * T, t_range[1] * T, draws).astype(int)
    age = None if ages is None else torch.as_tensor(np.asarray(ages, np.float32))
    total = torch.zeros(n)
    with torch.no_grad():
        for k, step in enumerate(steps):
            noise_one = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(seed * 1000 + k))
            for start in range(0, n, batch_size):
                xb = x[start:start + batch_size].to(device)
                b = xb.shape[0]
                t = torch.full((b,), int(step), dtype=torch.long, device=device)
                noise = noise_one.expand_as(xb).to(device)
                ab = None if age is None else age[start:start + batch_size].to(device)
                epsilon = core(diffusion.q_sample(xb, t, noise), t, xb, None, ab)
                total[start:start + b] += diffusion.per_sample_loss(epsilon, noise, t).float().cpu()
    return -(total / len(steps)).numpy().astype(np.float64)


def membership_audit(model, member_images, nonmember_images, *, delta: float, member_ages=None,
                     nonmember_ages=None, seed: int = 0, draws: int = 8, alpha: float = 0.05,
                     t_range: tuple[float, float] = (0.05, 0.6)) -> dict[str, Any]:
    """Scores both groups (`denoising_scores` at `draws` fixed draws over `t_range`) and returns
    the empirical epsilon lower bound with the attack's AUC.

    Power: even perfectly separated scores give a bound of 0 for 8 records per group, 0.25 for
    16, 1.10 for 32 and 1.86 for 64 (delta 1e-5, alpha 0.05; tests/test_privacy_empirical_power.py)."""
    from ndae.privacy.audit import attack_auc, empirical_epsilon_lower_bound

    members = denoising_scores(model, member_images, member_ages, seed=seed, draws=draws, t_range=t_range)
    nonmembers = denoising_scores(model, nonmember_images, nonmember_ages, seed=seed, draws=draws, t_range=t_range)
    result = empirical_epsilon_lower_bound(members, nonmembers, delta, alpha=alpha)
    result.update(score="-denoising loss (fixed seeded t and noise)", draws=draws, seed=seed, t_range=list(t_range),
                  auc=attack_auc(members, nonmembers), member_loss_mean=float(-members.mean()),
                  nonmember_loss_mean=float(-nonmembers.mean()))
    return result


def _controls(manifest: str | os.PathLike, cache_dir: str | os.PathLike | None):
    from ndae.data.dataset import load_slice_dataset

    data = load_slice_dataset(Path(manifest), Path(cache_dir) if cache_dir else None, progress=False)
    control = np.asarray(data.groups) == "control"
    if not control.any():
        raise NdaeError(f"{manifest}: no controls to audit")
    sites = sorted({str(s) for s in np.asarray(data.sites)[control]})
    return data.images[control], np.asarray(data.ages, np.float32)[control], sites


def accounted_epsilon(run_dir: str | os.PathLike, site: str) -> tuple[float, float | None]:
    """(epsilon, delta) the site's ledger accounts in this run; (inf, None) without a ledger."""
    from ndae.privacy.accountant import epsilon_of
    from ndae.privacy.ledger import ledger_path, read_ledger

    path = ledger_path(run_dir, site)
    if not path.exists():
        return math.inf, None
    entries = read_ledger(path)
    if not entries:
        return 0.0, None
    delta = float(entries[-1]["delta"])
    from ndae.privacy.ledger import ACCOUNTED_MECHANISMS

    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries
               if e["mechanism"] in ACCOUNTED_MECHANISMS]  # declared releases carry no epsilon
    return epsilon_of(history, delta, entries[-1]["accountant"]), delta


def _global_model(run_dir: Path, weights: str):
    """The run's global DAE: its trained weights ("model") or their EMA ("ema")."""
    from ndae.model import load_checkpoint

    if weights not in ("model", "ema"):
        raise NdaeError(f"--weights must be 'model' or 'ema', got {weights!r}")
    saved = load_checkpoint(run_dir / "dae" / "checkpoint.pt")
    return saved.model if weights == "model" else saved.ema.model


def _against_accounted(result: dict[str, Any], epsilon: float) -> dict[str, Any]:
    result.update(epsilon_accounted=epsilon, below_accounted=bool(result["epsilon_lower_bound"] <= epsilon))
    return result


def empirical_audit_run(run_dir: str | os.PathLike, members_manifest: str | os.PathLike,
                        nonmembers_manifest: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                        weights: str = "model", seed: int = 0, draws: int = 8, alpha: float = 0.05,
                        write: bool = True) -> dict[str, Any]:
    """Membership test of RUN's global DAE on one site's training controls (members) against
    held-out controls (non-members); reported beside the site's accounted epsilon. Runs where the
    data are: at the site. Writes `privacy/empirical.json` (scores are not written)."""
    from ndae.io import atomic_write_json

    run_dir = Path(run_dir)
    model = _global_model(run_dir, weights)
    member_images, member_ages, sites = _controls(members_manifest, cache_dir)
    nonmember_images, nonmember_ages, _ = _controls(nonmembers_manifest, cache_dir)
    if len(sites) != 1:
        raise NdaeError(f"{members_manifest}: the members must be one site's controls, found sites {sites}")
    site = sites[0]
    epsilon, delta = accounted_epsilon(run_dir, site)
    if delta is None:
        delta = 1.0 / (10.0 * len(member_images))
    conditioned = model.config.model.age_conditioned
    result = membership_audit(model, member_images, nonmember_images, delta=delta, seed=seed, draws=draws,
                              alpha=alpha, member_ages=member_ages if conditioned else None,
                              nonmember_ages=nonmember_ages if conditioned else None)
    _against_accounted(result, epsilon)
    result.update(site=site, weights=weights, members_manifest=str(members_manifest),
                  nonmembers_manifest=str(nonmembers_manifest))
    if write:
        from ndae.io import finite_or_null

        atomic_write_json(run_dir / "privacy" / "empirical.json", finite_or_null(result))
    return result


CANARY_T_RANGE = (0.02, 0.2)  # low noise: memorised fine detail shows most there (measured, see docs/privacy.md)


def canary_audit_run(run_dir: str | os.PathLike, *, privacy_dir: str | os.PathLike | None = None,
                     weights: str = "model", seed: int = 0, draws: int = 32, alpha: float = 0.05,
                     write: bool = True) -> dict[str, Any]:
    """One-run audit (ndae.privacy.canaries) of RUN's global DAE for every site whose canary record
    is in `privacy_dir` (default RUN/privacy, where simulated sites keep it; a deployed site passes
    its own folder). Needs no patient data: the canaries are synthetic. Writes
    `privacy/canaries_audit.json` in RUN. Each site's bound is compared with its accounted epsilon."""
    from ndae.io import atomic_write_json
    from ndae.privacy.canaries import one_run_audit, read_canary_record

    run_dir = Path(run_dir)
    folder = Path(privacy_dir) if privacy_dir else run_dir / "privacy"
    records = sorted(folder.glob("*.canaries.json"))
    if not records:
        raise NdaeError(f"{folder}: no canary records (*.canaries.json): train the run with audit-canaries > 0")
    model = _global_model(run_dir, weights)
    sites, scores, included, deltas = {}, [], [], []
    for path in records:
        canaries = read_canary_record(path)
        epsilon, delta = accounted_epsilon(run_dir, canaries.site)
        delta = 1e-5 if delta is None else delta
        ages = canaries.ages() if model.config.model.age_conditioned else None
        scores.append(denoising_scores(model, canaries.images(), ages, seed=seed, draws=draws, t_range=CANARY_T_RANGE))
        included.append(canaries.included())
        deltas.append(delta)
        sites[canaries.site] = _against_accounted(one_run_audit(scores[-1], included[-1], delta, alpha=alpha), epsilon)
        sites[canaries.site]["site"] = canaries.site
    report = {"weights": weights, "draws": draws, "seed": seed, "t_range": list(CANARY_T_RANGE), "sites": sites}
    if len(sites) > 1:
        # Every canary is a record some site protects with at most max(epsilon_site): pooling all
        # sites' canaries audits the global model against that maximum, with more guesses.
        pooled = one_run_audit(np.concatenate(scores), np.concatenate(included), max(deltas), alpha=alpha)
        report["pooled"] = _against_accounted(pooled, max(r["epsilon_accounted"] for r in sites.values()))
        report["pooled"]["site"] = "all sites"
    report["ok"] = all(r["below_accounted"] for _, r in canary_results(report))
    if write:
        from ndae.io import finite_or_null

        atomic_write_json(run_dir / "privacy" / "canaries_audit.json", finite_or_null(report))
    return report


def canary_results(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, result) for every site, then for all sites pooled when there is more than one."""
    pooled = [("all sites", report["pooled"])] if report.get("pooled") else []
    return [*report["sites"].items(), *pooled]


def format_canary_audit(report: dict[str, Any]) -> str:
    lines = [f"one-run canary audit ({report['weights']} weights, {report['draws']} fixed draws per canary):"]
    for site, r in canary_results(report):
        accounted = r["epsilon_accounted"]
        lines.append(
            f"  {site}: {r['correct']}/{r['guesses']} guesses right over {r['canaries']} canaries "
            f"({r['included']} trained on, AUC {r['auc']:.3f}): epsilon lower bound {r['epsilon_lower_bound']:.3f} "
            f"({1 - r['alpha']:.0%} confidence, delta {r['delta']:.3g}) vs accounted "
            f"{'inf (no DP ledger)' if not math.isfinite(accounted) else f'{accounted:.3f}'}: "
            f"{'below' if r['below_accounted'] else 'ABOVE (accounting is wrong or the test is broken)'}")
    return "\n".join(lines)


def format_empirical(result: dict[str, Any]) -> str:
    accounted = result["epsilon_accounted"]
    return (f"empirical audit (site {result['site']}, {result['n_members']} members vs "
            f"{result['n_nonmembers']} held-out controls, attack AUC {result['auc']:.3f}): epsilon lower bound "
            f"{result['epsilon_lower_bound']:.3f} at delta {result['delta']:.3g} "
            f"({1 - result['alpha']:.0%} confidence) vs accounted "
            f"{'inf (no DP ledger)' if not math.isfinite(accounted) else f'{accounted:.3f}'}: "
            f"{'below' if result['below_accounted'] else 'ABOVE (accounting is wrong or the test is broken)'}")


def main_json(result: dict[str, Any]) -> str:
    from ndae.io import finite_or_null

    return json.dumps(finite_or_null(result), indent=2, sort_keys=True)
