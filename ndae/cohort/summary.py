"""cohort.json's summary: counts and case mix per site, survival truth, injected effects, and
the site effect measured against the disease effect on one image feature."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from ndae.cohort.sites import Site
from ndae.cohort.survival import survival_summary


def _per_site(cohort: pd.DataFrame, sites: list[Site]) -> dict:
    per_site = {}
    for site in sites:
        here = cohort[cohort["site"] == site.name]
        als = here[here["group"] == "als"]
        per_site[site.name] = {
            "subjects": int(len(here)),
            "controls": int((here["group"] == "control").sum()),
            "patients": int(len(als)),
            "bulbar_onset": int((als["onset"] == "bulbar").sum()),
            "mean_age": float(here["age"].mean()) if len(here) else None,
            "mean_severity": float(als["severity"].mean()) if len(als) else None,
            "scanner": {k: v for k, v in site.to_dict().items() if k not in ("name", "size", "patients")},
        }
    return per_site


def _site_effect(cohort: pd.DataFrame) -> dict:
    """Site effect vs disease effect on one image feature a site-blind model would see."""
    patients = cohort[cohort["group"] == "als"]
    feature = "precentral_to_white_matter"
    site_means = cohort.groupby("site")[f"{feature}_delivered"].mean()
    scanner_shift = cohort[f"{feature}_delivered"] - cohort[f"{feature}_disease"]
    disease_shift = patients[f"{feature}_disease"] - patients[f"{feature}_source"]
    return {
        "feature": "mean precentral / mean white-matter intensity (scale-free, so gain cancels)",
        "mean_by_site_delivered": {k: float(v) for k, v in site_means.items()},
        "between_site_range_delivered": float(site_means.max() - site_means.min()) if len(site_means) > 1 else 0.0,
        "scanner_shift_by_site": {k: float(v) for k, v in scanner_shift.groupby(cohort["site"]).mean().items()},
        "disease_shift_mean": float(disease_shift.mean()) if len(patients) else None,
        "disease_shift_at_severity_above_0.7": float(disease_shift[patients["severity"] > 0.7].mean())
        if (patients["severity"] > 0.7).any() else None,
        "brain_intensity_median_by_site": {
            k: float(v) for k, v in cohort.groupby("site")["brain_intensity"].median().items()
        },
    }


def summarise(cohort: pd.DataFrame, sites: list[Site], config) -> dict:
    """`config`: the CohortConfig the cohort was generated with."""
    patients = cohort[cohort["group"] == "als"]
    controls = cohort[cohort["group"] == "control"]
    return {
        "seed": config.seed,
        "subjects": int(len(cohort)),
        "controls": int(len(controls)),
        "patients": int(len(patients)),
        "patient_anatomies": int(patients["source_subject"].nunique()),
        "patients_per_anatomy": int(config.patients_per_anatomy),
        "sites": _per_site(cohort, sites),
        "survival": survival_summary(patients) if len(patients) else {},
        "site_effect": _site_effect(cohort),
        "injected_effects_mean_over_patients": {
            "precentral_volume_change": float(patients["precentral_volume_change"].mean()) if len(patients) else None,
            "ventricles_volume_change": float(patients["ventricles_volume_change"].mean()) if len(patients) else None,
            "brain_volume_change": float(patients["brain_volume_change"].mean()) if len(patients) else None,
            "min_jacobian": float(patients["min_jacobian"].min()) if len(patients) else None,
        },
        "disease_model": asdict(config.disease),
        "survival_model": asdict(config.survival),
    }
