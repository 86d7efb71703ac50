"""`generate_cohort`: a multi-site ALS cohort simulated from healthy scans, with known truth.

The steps, each in its own module: the healthy input (`source`), the plan of sites and roles
(`plan`), the patients' draws (`patients`), each subject's images (`render`), the folder on
disk (`store`) and cohort.json's summary (`summary`). Every random draw comes from a stream
named by its purpose (`seeds`), so the output does not depend on the order or the number of
worker processes: same seed → the same bytes in manifest.csv, truth.csv and every image.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ndae.child_processes import worker_pool
from ndae.cohort.disease import PatientPhenotype
from ndae.cohort.patients import draw_patients
from ndae.cohort.plan import CohortConfig, assign_subjects, expand_patients, plan_sites, subject_ids
from ndae.cohort.render import render_subject
from ndae.cohort.source import healthy_manifest_path, read_healthy, seeded_subset, usable_subjects
from ndae.cohort.store import cohort_parameters, remove_marker, write_marker, write_tables
from ndae.cohort.summary import summarise

__all__ = ["CohortConfig", "generate_cohort", "read_healthy"]


def _render_tasks(cohort: pd.DataFrame, source: pd.DataFrame, sites, config: CohortConfig, out: Path) -> list[dict]:
    by_name = {site.name: site for site in sites}
    tasks = []
    for index, row in cohort.iterrows():
        phenotype = None
        if row["group"] == "als":
            phenotype = PatientPhenotype(row["severity"], row["onset"], row["onset_region"], row["onset_side"], row["asymmetry"])
        tasks.append(
            {
                "index": int(row["source_index"]),
                "copy": int(row["copy"]),
                "seed": config.seed,
                "subject": row["subject"],
                "image": source.at[index, "image"],
                "mask": source.at[index, "mask"],
                "phenotype": phenotype,
                "disease": config.disease,
                "site": by_name[row["site"]],
                "out_dir": str(out),
                "image_path": row["image"],
                "mask_path": row["mask"],
            }
        )
    return tasks


def generate_cohort(healthy: str | Path, out_dir: str | Path, config: CohortConfig = CohortConfig(),
                    progress: bool = True) -> dict:
    """Simulate the cohort into `out_dir`; returns the cohort.json summary.

    Everything is checked before the first write; cohort.json, the completion marker that
    `store.check_complete` reads, is removed first and written last. `progress`: subjects
    rendered so far on stderr (`ndae.progress.Counter`).
    """
    from ndae.progress import Counter

    out = Path(out_dir)
    frame = seeded_subset(read_healthy(healthy), config.max_subjects, config.seed)
    parameters = cohort_parameters(config, healthy_manifest_path(healthy))
    frame, excluded = usable_subjects(frame)
    sites = plan_sites(len(frame), config)
    cohort = expand_patients(assign_subjects(frame, sites, config.seed), config.patients_per_anatomy)
    source = frame.iloc[cohort["source_index"].to_numpy()].reset_index(drop=True)
    cohort["source_subject"] = source["subject"].to_numpy()
    cohort["age"] = source["age"].to_numpy()
    cohort["sex"] = source["sex"].to_numpy()
    cohort = draw_patients(cohort, sites, config.seed, config.disease, config.survival)
    cohort.insert(0, "subject", subject_ids(len(cohort), config.seed))
    cohort["image"] = [f"images/{r.site}/{r.subject}_T1.nii.gz" for r in cohort.itertuples()]
    cohort["mask"] = [f"images/{r.site}/{r.subject}_labels.nii.gz" for r in cohort.itertuples()]

    remove_marker(out)
    tasks = _render_tasks(cohort, source, sites, config, out)
    counter = Counter(len(tasks), "cohort", "subjects simulated", enabled=progress)
    results = []
    if config.jobs > 1:
        with worker_pool(config.jobs) as pool:  # workers die with this process
            for result in pool.map(render_subject, tasks, chunksize=1):
                results.append(result)
                counter.update()
    else:
        for task in tasks:
            results.append(render_subject(task))
            counter.update()
    counter.close()
    measured = pd.DataFrame(results)
    cohort = cohort.merge(measured, on="subject", how="left").sort_values("subject").reset_index(drop=True)

    write_tables(out, cohort, sites)
    if config.figure:
        from ndae.cohort.figure import example_figure

        control = cohort[cohort["group"] == "control"]
        pick = (control if len(control) else cohort).iloc[0]
        example_figure(
            frame.iloc[int(pick["source_index"])], out / "cohort_example.png", config.disease, config.seed
        )
    summary = summarise(cohort, sites, config)
    summary["excluded_subjects"] = excluded
    return write_marker(out, summary, parameters)
