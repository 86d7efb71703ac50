"""`ndae demo` in library form: demo data → cohort → simulated federation → report."""

from __future__ import annotations

import math
import time
from pathlib import Path

from ndae.errors import NdaeError
from ndae.federation.config import FederationConfig


DEFAULT_ROUNDS = 16
DEFAULT_LOCAL_EPOCHS = 10  # 16 x 10 local epochs: the loss still falls at round 8 (0.34 → 0.27); ~5 min on 2 idle cores
# Four patients per patient anatomy (independent severity, onset, survival): 240 patients from the
# 60 patient anatomies of the demo data. With 60 patients one survival draw moves the C-index by
# ±0.05, too much to tell what the imaging adds (issue 15).
DEFAULT_PATIENTS_PER_ANATOMY = 4


def run_demo(out: str | Path, *, sites: int = 3, rounds: int = DEFAULT_ROUNDS,
             local_epochs: int = DEFAULT_LOCAL_EPOCHS, strategy: str = "fedavg", survival_mode: str = "auto",
             preset: str = "tiny", seed: int = 0, max_subjects: int | None = None, jobs: int = 2,
             in_process: bool = False, privacy: bool = False, target_epsilon: float = 8.0,
             audit_canaries: int = 0, healthy: str | Path | None = None, resume: bool = False,
             force: bool = False, patients_per_anatomy: int = DEFAULT_PATIENTS_PER_ANATOMY,
             survival_features: str | None = None, cohort: str | Path | None = None, log=print) -> Path:
    """The run folder `out` is claimed first (`ndae.run_folder`): locked against a second process,
    and a folder holding a run is refused unless `resume` (same settings) or `force` (start over).
    Every argument is checked before that, so a bad one fails in a second, not after the cohort.

    The cohort is made once: `cohort` names an existing one (from `ndae cohort` or an earlier
    demo), else the demo's is taken from the cohort cache (`ndae.cohort.cache`) and simulated
    only when no cohort of these parameters is there. Either way the run gets its own hard-linked
    copy in `out/cohort` (a private site's ledger is written beside its manifest). The sites'
    prepared subjects are not the run's: they live in the simulation cache shared by every run of
    the cohort (`ndae.federation.site.data.site_cache_dir`), so a rerun prepares nothing."""
    from ndae.cohort import CohortConfig
    from ndae.cohort.cache import cached_cohort, link_cohort
    from ndae.run_folder import claim_output

    settings = demo_settings(sites=sites, rounds=rounds, local_epochs=local_epochs, strategy=strategy,
                             survival_mode=survival_mode, preset=preset, seed=seed, max_subjects=max_subjects,
                             in_process=in_process, privacy=privacy, target_epsilon=target_epsilon,
                             audit_canaries=audit_canaries, healthy=healthy,
                             patients_per_anatomy=patients_per_anatomy, survival_features=survival_features,
                             cohort=cohort)
    check_demo_arguments(settings, jobs)
    out = Path(out).expanduser().resolve()
    cohort_dir = out / "cohort"
    if cohort and Path(settings["cohort"]).is_relative_to(out):
        # --force deletes the run's outputs, out/cohort among them: the cohort given would be lost.
        raise NdaeError(f"--cohort {settings['cohort']}: is inside the run folder --out {out} (whose outputs "
                        "--force deletes); give a cohort outside it, or drop --cohort to use the cached one")
    # A killed run with these settings is continued without --resume (the lock says nothing runs it);
    # a folder of other files, / or $HOME is refused before anything is written into it.
    claim = claim_output(out, command="demo", settings=settings, outputs=DEMO_OUTPUTS, resume=resume, force=force,
                         continue_interrupted=True, foreign_files=False, status_files=("status.json",))
    if claim.continued:
        log(f"[demo] continuing the interrupted run in {out} (same settings; nothing was running it)")
    with claim:  # released at the end; a failure before any output drops the record
        started = time.time()
        expected = {} if cohort else dict(sites=sites, seed=seed, max_subjects=max_subjects,
                                          patients_per_anatomy=patients_per_anatomy, healthy_manifest=healthy)
        if cohort_dir.exists() and not _usable_cohort(cohort_dir, expected, log):
            import shutil

            shutil.rmtree(cohort_dir)  # half-written (killed): made again, it is the same cohort (seeded)
        if not cohort_dir.exists():
            if cohort:
                source = Path(settings["cohort"])
                log(f"[demo] using the cohort {source}")
            else:
                if healthy is None:
                    from ndae.data.demo import DEMO_ARCHIVE, demo_manifest_path

                    if not DEMO_ARCHIVE.exists():
                        raise NdaeError(f"the demo data archive {DEMO_ARCHIVE} is missing from this installation")
                    healthy = demo_manifest_path()
                config = CohortConfig(sites=sites, seed=seed, max_subjects=max_subjects, jobs=jobs,
                                      patients_per_anatomy=patients_per_anatomy)
                from ndae.cohort.cache import cohort_cache_dir

                if not (cohort_cache_dir(config, healthy) / "cohort.json").exists():
                    log(f"[demo] simulating a {sites}-site ALS cohort from {healthy} on {jobs} process(es) "
                        f"(kept in {cohort_cache_dir(config, healthy).parent} for the next run) ...")
                source, _ = cached_cohort(healthy, config, log=log)
            link_cohort(source, cohort_dir)
        log(f"[demo] cohort ready ({time.time() - started:.0f} s): {cohort_dir}")
        n_sites = sum(1 for p in (cohort_dir / "sites").iterdir() if (p / "manifest.csv").exists())
        config = FederationConfig(run_dir=str(out), cohort_dir=str(cohort_dir),
                                  dae_preset=preset, rounds=rounds, local_epochs=local_epochs, strategy=strategy,
                                  survival_mode=survival_mode, seed=seed, min_sites=min(2, n_sites),
                                  privacy=privacy, target_epsilon=target_epsilon if privacy else 0.0,
                                  audit_canaries=audit_canaries, survival_features=settings["survival_features"])
        if in_process:
            from ndae.federation.inprocess import InProcessGrid
            from ndae.federation.server.phases import run_federation
            from ndae.federation.site.data import site_cache_dir

            manifests = sorted((cohort_dir / "sites").glob("*/manifest.csv"))
            grid = InProcessGrid(manifests, config.to_run_config())
            for context in grid.contexts.values():
                # In process each site is a node naming its manifest (the run's copy), whose own cache
                # would be this run's alone: give it the folder its simulated node shares across runs.
                folder = site_cache_dir({}, context.node_config["manifest"], config.cache_dir)
                context.node_config = {**context.node_config, "cache-dir": str(folder)}
            run_federation(grid, config, log=log)
        else:
            from ndae.federation.simulation import run_simulation

            from ndae.progress import RunWatcher

            log(f"[demo] flwr run: {n_sites} simulated hospitals, {rounds} round(s) × {local_epochs} epoch(s) "
                f"(logs in {out / 'logs'}) ...")
            with RunWatcher(out, rounds, n_sites, log=log):
                run_simulation(config.to_run_config(), n_sites)
        add_demo_sections(out, cohort_dir, config.cache_dir)
        from ndae.reporting.site_example_maps import append_example_maps_section

        append_example_maps_section(out, cohort_dir)  # where each site wrote its maps (they stay there)
        claim.finish()
    from ndae.progress import duration

    log(f"[demo] done in {duration(time.time() - started)}")
    return out / "report.md"


# The demo's Cox model: the NDAE model that adds most over the covariates in the benchmarks, every
# region of the prior residuals (RESULTS.md "NDAE directions"). Not the paper's cosine beside it: it
# keeps the latent's shared mean, so it varies by ~1e-4 across patients and its coefficient in a
# per-unit Cox model is ill-conditioned (measured: coef 746, se 1597); `ndae evaluate` reports its
# hazard ratio per SD. 240 patients, ~160 events: 10 covariates keep ≥ 10 events each. (`flwr run`
# keeps the app's own default, cosine and Mahalanobis: small test cohorts cannot carry 10.)
DEMO_SURVIVAL_FEATURES = "prior"

# What a demo writes into its run folder (deleted by --force; any of them marks a previous run).
# "cache": where runs made before the shared simulation cache kept their prepared subjects.
DEMO_OUTPUTS = ("cohort", "cache", "logs", "privacy", "dae", "normative", "normative_prior", "survival", "config.json",
                "status.json", "summary.json", "metrics.jsonl", "deviations.csv", "report.md", "failure.md",
                "report.html", "failure.html", "figures", "prepared_subject.png")


def demo_settings(*, sites: int = 3, rounds: int = DEFAULT_ROUNDS, local_epochs: int = DEFAULT_LOCAL_EPOCHS,
                  strategy: str = "fedavg", survival_mode: str = "auto", preset: str = "tiny", seed: int = 0,
                  max_subjects: int | None = None, in_process: bool = False, privacy: bool = False,
                  target_epsilon: float = 8.0, audit_canaries: int = 0, healthy: str | Path | None = None,
                  patients_per_anatomy: int = DEFAULT_PATIENTS_PER_ANATOMY,
                  survival_features: str | None = None, cohort: str | Path | None = None) -> dict:
    """What makes a demo run this run (its record in the run folder; --resume requires the same).
    Not --jobs: the cohort does not depend on it. `cohort` is recorded only when given, so the
    record of a demo on its own cohort is what it was before the option existed."""
    extra = {"cohort": str(Path(cohort).expanduser().resolve())} if cohort else {}
    return dict(sites=sites, rounds=rounds, local_epochs=local_epochs, strategy=strategy, survival_mode=survival_mode,
                preset=preset, seed=seed, max_subjects=max_subjects, in_process=in_process, privacy=privacy,
                target_epsilon=target_epsilon if privacy else None, audit_canaries=audit_canaries,
                healthy=str(Path(healthy).expanduser().resolve()) if healthy else None,
                patients_per_anatomy=patients_per_anatomy,
                survival_features=survival_features or DEMO_SURVIVAL_FEATURES, **extra)


def check_demo_arguments(settings: dict, jobs: int) -> None:
    """Every `ndae demo` argument, checked before anything is generated (names the option)."""
    from ndae.presets import PRESETS  # torch-free: a typo in --preset fails at once

    if settings["preset"] not in PRESETS:
        raise NdaeError(f"--preset {settings['preset']!r}: unknown DAE preset; choose one of {', '.join(PRESETS)}")
    from ndae.cli_types import MAX_PATIENTS_PER_ANATOMY, MAX_SEED, check_int, check_jobs

    for option, value, least in (("--sites", settings["sites"], 1), ("--rounds", settings["rounds"], 0),
                                 ("--local-epochs", settings["local_epochs"], 1),
                                 ("--audit-canaries", settings["audit_canaries"], 0)):
        if int(value) < least:
            raise NdaeError(f"{option} must be at least {least}, got {value}")
    check_int("--seed", settings["seed"], 0, MAX_SEED)
    check_jobs("--jobs", jobs)
    check_int("--patients-per-anatomy", settings["patients_per_anatomy"], 1, MAX_PATIENTS_PER_ANATOMY)
    if settings["max_subjects"] is not None and settings["max_subjects"] < max(2, settings["sites"]):
        raise NdaeError(f"--max-subjects {settings['max_subjects']}: needs at least one subject per site "
                        f"(--sites {settings['sites']}) and at least 2")
    if settings["privacy"]:
        epsilon = settings["target_epsilon"]
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise NdaeError(f"--target-epsilon {epsilon}: a private run needs a finite epsilon > 0 to spend per site")
        if settings["survival_mode"] == "pooled":
            # The simulated sites keep the default policy: no patient's scores leave a private site.
            raise NdaeError("--survival-mode pooled: a private run's sites do not share patients' scores (their "
                            "policy lacks allow-pooled-scores=true); use --survival-mode federated or auto")
    healthy = settings.get("healthy")
    if healthy and not Path(healthy).exists():
        raise NdaeError(f"{healthy}: healthy-scan manifest not found")
    if settings.get("cohort"):
        from ndae.cohort.store import CohortFolderError, check_complete

        try:
            check_complete(settings["cohort"])
        except CohortFolderError as error:
            raise NdaeError(f"--cohort: {error}") from None
    # The run config's own checks (strategy x privacy, survival mode, ...), with a placeholder folder.
    FederationConfig(run_dir=".", cohort_dir=".", dae_preset=settings["preset"], rounds=settings["rounds"],
                     local_epochs=settings["local_epochs"], strategy=settings["strategy"],
                     survival_mode=settings["survival_mode"], seed=settings["seed"],
                     min_sites=min(2, settings["sites"]), privacy=settings["privacy"],
                     target_epsilon=settings["target_epsilon"] if settings["privacy"] else 0.0,
                     audit_canaries=settings["audit_canaries"], survival_features=settings["survival_features"])


def _usable_cohort(cohort_dir: Path, expected: dict, log) -> bool:
    """True for a complete cohort folder made with these settings; False for a half-written one
    (no completion marker or missing files: generation was killed); refuses one made otherwise."""
    from ndae.cohort.store import CohortMismatchError, IncompleteCohortError, check_complete

    try:
        check_complete(cohort_dir, {key: value for key, value in expected.items()
                                    if value is not None or key == "max_subjects"})
    except IncompleteCohortError as error:
        log(f"[demo] {error}: simulating it again")
        return False
    except CohortMismatchError as error:
        raise CohortMismatchError(f"{error}; pass --force to start the demo over") from None
    return True


def add_demo_sections(out: Path, cohort_dir: Path, cache_dir: str = "") -> None:
    """Append what only the simulation knows to the report: the oracle C* and the example figures.
    `cache_dir`: the run config's cache root (where the sites' prepared subjects are)."""
    import json

    from ndae.data.figures import plot_prepared_subject
    from ndae.data.manifest import read_manifest
    from ndae.io import atomic_write_text

    cohort = json.loads((cohort_dir / "cohort.json").read_text())
    survival = cohort["survival"]
    summary_path = out / "summary.json"
    achieved = ""
    if summary_path.exists():
        import pandas as pd

        within = _find_c_index(json.loads(summary_path.read_text()))
        if within is not None:
            achieved = " " + _same_pairs_sentence(pd.read_csv(cohort_dir / "truth.csv"), *within)

    first = read_manifest(cohort_dir / "manifest.csv").iloc[0]
    prepared = _prepared_example(cohort_dir, first, cache_dir)
    plot_prepared_subject(prepared, out / "prepared_subject.png")

    section = (
        "\n## Simulation truth (never seen by the models)\n\n"
        f"The cohort was simulated from real healthy IXI anatomy ({cohort['controls']} controls, "
        f"{cohort['patients']} patients; `cohort/truth.csv`, model in `docs/cohort.md`). "
        f"The oracle C-index of the true risk on these patients (all pairs) is "
        f"**C\\* = {survival['oracle_c_index']:.3f}** "
        f"(censoring {survival['censoring_fraction']:.0%}, Kaplan–Meier median "
        f"{survival['kaplan_meier_median_months']:.1f} months). C-indices here are on the training patients; "
        f"`ndae evaluate` gives cross-validated ones.{achieved}\n\n"
        "![A control and the same anatomy as a mild and a severe patient](cohort/cohort_example.png)\n\n"
        f"![A prepared subject ({first['subject']}): three views with the brain mask](prepared_subject.png)\n"
    )
    report = out / "report.md"
    atomic_write_text(report, report.read_text().rstrip() + "\n" + section)


def _prepared_example(cohort_dir: Path, row, cache_dir: str):
    """The subject of `row` as its site prepared it for the federation (read from the site's cache),
    prepared here only when that cache does not hold it as it is now."""
    import ndae.data.preprocess  # looked up at call time, so tests can count the preparations
    from ndae.data.cache import is_cached, load_prepared, provenance
    from ndae.federation.site.data import site_cache_dir

    folder = site_cache_dir({}, cohort_dir / "sites" / str(row["site"]) / "manifest.csv", cache_dir)
    if is_cached(folder, provenance(row, ndae.data.preprocess.PrepareConfig())):
        return load_prepared(folder, row["subject"])
    return ndae.data.preprocess.prepare_subject(row["image"], row.get("mask"), row["subject"])


def _find_c_index(summary: dict) -> tuple[dict, dict] | None:
    """(survival, within-site added value) from summary.json: the federation's full and
    covariates-only C on the training patients' within-site pairs; None when the run made none."""
    survival = summary.get("survival", {})
    within = survival.get("added_value", {}).get("within_site")
    if not isinstance(within, dict) or not isinstance(within.get("c_model"), (int, float)):
        return None
    return survival, within


def _same_pairs_sentence(truth, survival: dict, within: dict) -> str:
    """C* of the true risk on the pairs the federation's C was computed on (within each site that
    answered, its patients), beside the covariates-only and the full model's C; every figure computed."""
    from ndae.federation.paired_concordance import pooled_paired_concordance
    from ndae.federation.server.report import added_value_reading

    patients = truth[truth["site"].astype(str).isin(within["sites"]) & truth["risk"].notna()
                     & truth["time"].notna() & truth["event"].notna()]
    oracle = pooled_paired_concordance(patients["time"], patients["event"].astype(float), patients["risk"],
                                       patients["risk"], patients["site"].astype(str))
    pairs = oracle["comparable_pairs"]
    # The sites round follow-up before it leaves them, so a few tied times can make the truth's
    # comparable pairs differ from the federation's: then both counts are given.
    close = abs(pairs - within["comparable_pairs"]) <= 0.01 * max(pairs, 1.0)
    same = "the same" if pairs == within["comparable_pairs"] else (
        f"{'nearly the same' if close else 'other'} (the truth's follow-up gives {pairs:.0f} comparable pairs, the sites' rounded follow-up "
        f"{within['comparable_pairs']:.0f})")
    covariates = ", ".join(survival["added_value"]["covariates"])
    features = ", ".join(survival["added_value"]["features"])
    counted = f" ({pairs:.0f} comparable pairs)" if same == "the same" else ""
    return (f"On {same} within-site pairs of the {len(patients)} patients of {', '.join(within['sites'])}"
            f"{counted}, the true risk reaches C\\* = {oracle['c_model']:.3f} "
            f"(se {oracle['se_model']:.3f}), the covariates-only model ({covariates}) {within['c_reference']:.3f} "
            f"and the full model (+ {features}) {within['c_model']:.3f}, both on the patients they were fitted on. "
            f"Imaging over covariates: {added_value_reading(within, features, covariates, ' (in-sample)')}"
            + _cross_validated_sentence(survival["added_value"], features, covariates))


def _cross_validated_sentence(added: dict, features: str, covariates: str) -> str:
    """Pooled runs also measured the difference out of sample: its reading, where it was computed."""
    from ndae.federation.server.report import added_value_reading

    estimate = added.get("cross_validated")
    if not isinstance(estimate, dict) or "not_computed" in estimate:
        return ""
    return f" {estimate['kind'].capitalize()}: {added_value_reading(estimate, features, covariates)}"
