"""One site of a synthetic cohort with an untrained DAE and a random normative model of z_sem of
the right sizes: what the tests of a single site's answers (the attacks on its handlers, its
example maps) ask it with, without training anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def untrained_site(root: Path, config, *, controls: int, patients: int, seed: int) -> dict:
    """`root`/cohort with one site (`site1`) of `controls` and `patients`; the site loaded as a
    ClientApp loads it (prepared into `config.cache_dir`, else the default cache); the DAE of
    `config` at torch seed 0; a NormativeModel of z_sem fitted on Gaussian noise. `rng` is the
    generator that drew the noise, for a caller that fits more models after it."""
    import torch

    from ndae.federation.records import ema_weights_record
    from ndae.federation.server.strategy import dae_config_for
    from ndae.federation.site.data import load_site, site_cache_dir
    from ndae.federation.site.statistics import covariates
    from ndae.federation.site.training import build_dae
    from ndae.normative import NormativeModel
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    make_synthetic_cohort(root / "cohort", sites=1, controls_per_site=controls, patients_per_site=patients, seed=seed)
    manifest = root / "cohort" / "sites" / "site1" / "manifest.csv"
    site = load_site(manifest, prepared_dir=site_cache_dir({"manifest": str(manifest)}, manifest, config.cache_dir))
    dae = dae_config_for(config, int(site.data.images.shape[1]))
    torch.manual_seed(0)
    _, ema = build_dae(dae.to_dict(), "cpu")
    frame = covariates(site, np.ones(len(site.data.subjects), bool))
    rng = np.random.default_rng(0)
    z_sem = NormativeModel().fit(frame, rng.normal(size=(len(frame), dae.model.z_sem_dim)))
    return {"root": root, "manifest": manifest, "site": site, "dae": dae.to_dict(),
            "weights": ema_weights_record(ema), "z_sem": z_sem, "frame": frame, "rng": rng}
