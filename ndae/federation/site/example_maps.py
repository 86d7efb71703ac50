"""Runs AT THE SITE: deviation maps of a few example patients, drawn into the site's own folder
and never sent.

- **What**: each example patient's prior residual x − x̂₀(x_t | normative z_sem) of
  `ndae.deviation.prior_residuals` (where the patient's image departs from the healthy brain the
  DAE draws for their age and sex: what the regional scores `z_prior_*` average), on the DAE's
  prepared axial slices over the patient's own image, inside the brain, with one labelled colourbar.
- **Which patients**: the `EXAMPLES` patients of the site with the largest Mahalanobis deviation
  of z_sem (`ndae.deviation.scores`: every run computes it, whatever its survival features), ties
  by subject id.
- **Where**: `<manifest folder>/example_maps/<subject>_prior_residual.png`. The folder follows from
  the site's own manifest (its node config on a SuperNode; in a simulation the cohort's site
  folder), as the privacy folder's default does; never from a path the run config names. Maps of
  patients no longer among the examples are removed, so the folder holds the last run's examples.
- **When**: the site's policy allows it (node config `example-maps`: on for a simulated node, off
  on a deployed SuperNode, whose hospital decides; `ndae.federation.site.policy`). A run config
  naming the key is refused: the server cannot turn them on.

Nothing of them leaves the site: the deviations reply is the same with or without them. A failure
here is logged at the site and does not stop its answer: the maps illustrate, the scores count.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.errors import NdaeError

__all__ = ["EXAMPLES", "FOLDER", "SUFFIX", "example_maps_dir", "example_patients", "example_map_figures",
           "write_example_maps"]

EXAMPLES = 3
FOLDER = "example_maps"
SUFFIX = "_prior_residual.png"
RANK_SCORE = "mahalanobis"
COLOURBAR_LABEL = "x − x̂₀ (prepared image intensity, scaled to −1…1)"

_log = logging.getLogger("ndae.site")


def example_maps_dir(manifest_path: str | Path) -> Path:
    """The site's folder for its example maps, beside its manifest."""
    return Path(manifest_path).expanduser().resolve().parent / FOLDER


def example_patients(table: pd.DataFrame, count: int = EXAMPLES) -> list[str]:
    """The `count` patients of the site's deviation table with the largest Mahalanobis deviation."""
    ranked = table.assign(subject=table["subject"].astype(str)).sort_values(
        [RANK_SCORE, "subject"], ascending=[False, True], na_position="last")
    return ranked["subject"].head(count).tolist()


def example_map_figures(site, weights, dae_config: dict, normative, subjects: list[str], device: str = "auto"):
    """[(subject, matplotlib figure)] of the prior residual maps of `subjects` (the site's
    patients), with the global EMA weights and the normative model of z_sem. Close the figures."""
    from ndae.data.cache import load_prepared
    from ndae.deviation.maps import deviation_figure
    from ndae.deviation.prior_residuals import NORMATIVE, prior_residual_maps
    from ndae.federation.records import record_to_dae
    from ndae.federation.site.statistics import covariates
    from ndae.federation.site.training import build_dae
    from ndae.model.run import resolve_device
    from ndae.normative.model import OutOfRangeWarning

    if not subjects:
        return []
    ids = np.asarray(site.data.subjects).astype(str)
    index = np.asarray([int(np.flatnonzero(ids == str(s))[0]) for s in subjects])
    model, ema = build_dae(dae_config, resolve_device(device))
    record_to_dae(weights, model, ema)
    config = model.config
    frame = covariates(site, index).reset_index(drop=True)
    with warnings.catch_warnings():  # out-of-range ages are reported by the latent scores already
        warnings.simplefilter("ignore", OutOfRangeWarning)
        z_normative = normative.predict(frame)[0]
    images = site.data.images[index]
    ages = np.asarray(site.data.ages, np.float32)[index] if config.model.age_conditioned else None
    residuals = prior_residual_maps(ema.model, config, images, z_normative, ages, out_size=images.shape[2:])
    maps = residuals.maps[NORMATIVE]
    channels = list(config.model.slice_channels or range(images.shape[1]))
    # Every prepared subject has the same slice positions (part of the cache's settings).
    z_mm = load_prepared(site.prepared_dir, str(subjects[0])).slice_z_mm[channels]
    figures = []
    for k, subject in enumerate(subjects):
        under = images[k][channels]
        inside = np.where(under > -1.0, maps[k], 0.0)  # the background's residual is no deviation
        # [::-1].T: the prepared slice's rows run posterior to anterior; shown as the grid's x, y.
        panels = [(inside[c][::-1].T, under[c][::-1].T) for c in range(len(channels))]
        figures.append((str(subject), deviation_figure(
            panels, label=COLOURBAR_LABEL, panel_titles=[f"axial z = {z:+.0f} mm (MNI)" for z in z_mm],
            title=f"{subject} ({site.name}): image − the DAE's healthy prior x̂₀ for age and sex\n"
                  "red: brighter than expected, blue: darker; a mean over noise levels and draws")))
    return figures


def write_example_maps(site, policy, weights, dae_config: dict, normative, table: pd.DataFrame,
                       device: str = "auto") -> list[Path]:
    """The example patients' maps written into the site's folder where its policy allows; the
    paths written (stay at the site)."""
    if not policy.example_maps or not len(table):
        return []
    import matplotlib.pyplot as plt

    from ndae.data.subject_ids import subject_file
    from ndae.io import atomic_save_figure

    folder = example_maps_dir(site.manifest_path)
    written: list[Path] = []
    try:
        for subject, figure in example_map_figures(site, weights, dae_config, normative, example_patients(table),
                                                   device):
            try:
                path = subject_file(folder, subject, SUFFIX)
                atomic_save_figure(path, figure)
                written.append(path)
            finally:
                plt.close(figure)
        for stale in folder.glob(f"*{SUFFIX}"):
            if stale not in written:
                stale.unlink()
    except (NdaeError, OSError, ValueError, RuntimeError, KeyError, IndexError):
        _log.warning("site %r could not write its example deviation maps into %s", site.name, folder, exc_info=True)
    return written
