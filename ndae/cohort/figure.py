"""cohort_example.png: one healthy anatomy as a control, a mild and a severe patient, and the
differences, without scanner effects so that only the disease shows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ndae.cohort import anatomy as landmarks  # noqa: E402
from ndae.cohort.anatomy import load_anatomy  # noqa: E402
from ndae.cohort.disease import DiseaseModel, PatientPhenotype  # noqa: E402
from ndae.io import atomic_save_figure  # noqa: E402

MILD, SEVERE = 0.3, 0.9


def example_figure(row, path: str | Path, model: DiseaseModel = DiseaseModel(), seed: int = 0) -> None:
    """`row`: a healthy-manifest row (image, mask, subject, age)."""
    from ndae.cohort.render import render, to_magnitude

    anatomy, stripped = to_magnitude(load_anatomy(row["image"], row["mask"]))
    rng = np.random.default_rng(seed)
    volumes = {}
    for name, severity in (("control", 0.0), ("mild", MILD), ("severe", SEVERE)):
        phenotype = PatientPhenotype(severity, "limb", "upper_limb", "left", 0.25) if severity else None
        image, labels, _, _ = render(anatomy, phenotype, model, None, rng, stripped)
        volumes[name] = (image, labels)

    labels = anatomy.labels

    def index_of(ids, axis, quantile=50):
        found = np.argwhere(np.isin(labels, ids))
        return int(np.percentile(found[:, axis], quantile))

    views = [
        ("axial, motor cortex", 2, index_of(landmarks.PRECENTRAL, 2, 75)),
        ("axial, ventricles", 2, index_of(landmarks.LATERAL_VENTRICLES, 2)),
        ("coronal, internal capsule", 1, index_of((93, 94), 1)),
    ]
    columns = ["control", f"mild (s = {MILD})", f"severe (s = {SEVERE})", "mild − control", "severe − control"]
    figure, axes = plt.subplots(len(views), len(columns), figsize=(3.0 * len(columns), 3.0 * len(views)))
    top = float(np.percentile(volumes["control"][0][labels > 0], 99.5))
    for r, (title, axis, index) in enumerate(views):
        cut = lambda volume: np.rot90(np.take(volume, index, axis=axis))  # noqa: E731
        base = volumes["control"][0]
        panels = [base, volumes["mild"][0], volumes["severe"][0], volumes["mild"][0] - base, volumes["severe"][0] - base]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if c < 3:
                intensity = ax.imshow(cut(panel), cmap="gray", vmin=0, vmax=top)
                name = ("control", "mild", "severe")[c]
                ax.contour(cut(np.isin(volumes[name][1], landmarks.PRECENTRAL)), levels=[0.5], colors="tab:orange", linewidths=0.6)
                ax.contour(cut(np.isin(volumes[name][1], landmarks.LATERAL_VENTRICLES)), levels=[0.5], colors="tab:cyan", linewidths=0.6)
            else:
                difference = ax.imshow(cut(panel), cmap="RdBu_r", vmin=-0.4 * top, vmax=0.4 * top)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(title, fontsize=9)
    figure.suptitle(
        f"Simulated ALS on one healthy anatomy ({row['subject']}, age {row['age']:.0f}): limb onset, left-dominant. "
        "Orange: precentral gyri; cyan: lateral ventricles; no scanner effects.",
        fontsize=10,
    )
    figure.tight_layout()
    # after tight_layout: the colourbars take their room from the panels they describe
    figure.colorbar(intensity, ax=list(axes[:, :3].ravel()), shrink=0.6, pad=0.01, label="T1w intensity (a.u.)")
    figure.colorbar(difference, ax=list(axes[:, 3:].ravel()), shrink=0.6, pad=0.01,
                    label="difference from control (a.u.)")
    atomic_save_figure(path, figure)
    plt.close(figure)
