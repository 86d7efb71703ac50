"""The ALS imaging phenotype injected into a healthy anatomy (see docs/cohort.md for sources).

Three effects, each graded by the latent severity s ∈ [0, 1]:

1. Motor cortex: grey-matter loss in the precentral gyri (MUSE 182/183, 150/151) as a smooth
   local shrinkage of the gyrus plus a partial-volume drop of its T1 signal towards CSF. The
   loss is focal on the homunculus (bulbar onset → inferolateral, limb onset → dorsolateral
   hand knob or medial leg area), spreads contiguously with s, and is stronger on one side.
2. Corticospinal tract: T1 signal drop in white matter along the tract, from the motor cortex
   through the posterior limb of the internal capsule (93/94) to the brainstem (35).
3. Accelerated ageing: lateral-ventricle (51/52) enlargement and global brain shrinkage, as a
   smooth fold-free warp.

Intensity effects are applied in the subject's own space; the warp is returned as a pull-back
displacement so that the caller can apply it (with any scanner positioning) to the image and,
by nearest neighbour, to the label map in one resampling.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from ndae.cohort import anatomy as landmarks
from ndae.cohort.anatomy import Anatomy
from ndae.cohort.deformation import atrophy_displacement, exponentiate, structure_displacement

ONSETS = ("bulbar", "limb")
ONSET_REGIONS = ("bulbar", "upper_limb", "lower_limb")


@dataclass(frozen=True)
class DiseaseModel:
    """Effect sizes at severity s = 1 (full focal weight, onset side). Linear in s."""

    # Motor cortex. Position on the homunculus: 0 = face/tongue (inferolateral), 1 = leg (medial).
    precentral_shrink_mm: float = 4.0  # growth of the pial CSF into the gyrus
    precentral_sigma_mm: float = 4.0
    pial_reach_mm: float = 4.0  # CSF this close to the gyrus takes part in its thinning
    precentral_csf_fraction: float = 0.35  # partial-volume CSF added inside the gyrus
    somatotopic_focus: tuple[tuple[str, float], ...] = (("bulbar", 0.1), ("upper_limb", 0.6), ("lower_limb", 0.9))
    focus_width: float = 0.15  # homunculus units at s = 0 ...
    spread_width: float = 0.35  # ... plus this much at s = 1 (contiguous spread)
    asymmetry_range: tuple[float, float] = (0.1, 0.35)  # contralateral side weaker by this fraction
    # Corticospinal tract.
    cst_signal_drop: float = 0.15  # fractional T1 signal drop on the tract axis
    cst_radius_mm: float = 4.0
    # Accelerated ageing.
    ventricle_growth_mm: float = 3.0
    ventricle_sigma_mm: float = 5.0
    global_shrink: float = 0.015  # linear fraction (≈ 4.5 % of brain volume)

    def focus(self, onset_region: str) -> float:
        return dict(self.somatotopic_focus)[onset_region]



def _cortex_only() -> DiseaseModel:
    """Only the precentral gyri change: no tract, no ventricles, no global atrophy. A model that
    scored well through the ventricles alone scores nothing here."""
    return replace(DiseaseModel(), cst_signal_drop=0.0, ventricle_growth_mm=0.0, global_shrink=0.0)


def _mild() -> DiseaseModel:
    """Every effect at half its default size (the focal pattern and its spread unchanged)."""
    base = DiseaseModel()
    return replace(base, precentral_shrink_mm=base.precentral_shrink_mm / 2,
                   precentral_csf_fraction=base.precentral_csf_fraction / 2, cst_signal_drop=base.cst_signal_drop / 2,
                   ventricle_growth_mm=base.ventricle_growth_mm / 2, global_shrink=base.global_shrink / 2)


# Named disease settings (`ndae cohort --disease`). Models are judged on more than one, so that no
# choice is tuned to the default's strongest effect.
DISEASE_SETTINGS = {"als": DiseaseModel, "cortex-only": _cortex_only, "mild": _mild}
DEFAULT_DISEASE = "als"


def disease_setting(name: str) -> DiseaseModel:
    """The DiseaseModel of a named setting; NdaeError naming the choices for any other name."""
    from ndae.errors import NdaeError

    if name not in DISEASE_SETTINGS:
        raise NdaeError(f"--disease {name!r}: unknown disease setting; choose {', '.join(DISEASE_SETTINGS)}")
    return DISEASE_SETTINGS[name]()

@dataclass(frozen=True)
class PatientPhenotype:
    severity: float
    onset: str  # "bulbar" or "limb"
    onset_region: str  # "bulbar", "upper_limb" or "lower_limb"
    onset_side: str  # "left" or "right": the more affected hemisphere
    asymmetry: float  # the other hemisphere's effects are weaker by this fraction

    def side_weight(self, side: str) -> float:
        return 1.0 if side == self.onset_side else 1.0 - self.asymmetry


def draw_phenotype(
    rng: np.random.Generator, severity: float, bulbar: bool, model: DiseaseModel = DiseaseModel()
) -> PatientPhenotype:
    """Onset region/side and asymmetry for a patient of given severity and onset type."""
    if bulbar:
        region = "bulbar"
    else:  # upper-limb onset is about twice as common as lower-limb onset
        region = "upper_limb" if rng.random() < 0.6 else "lower_limb"
    side = "left" if rng.random() < 0.5 else "right"
    asymmetry = float(rng.uniform(*model.asymmetry_range))
    return PatientPhenotype(float(severity), "bulbar" if bulbar else "limb", region, side, asymmetry)


def motor_cortex_weight(anatomy: Anatomy, phenotype: PatientPhenotype, model: DiseaseModel) -> np.ndarray:
    """Per-voxel involvement of the precentral gyri ∈ [0, 1] (before multiplying by s)."""
    index, position = landmarks.somatotopic_position(anatomy)
    width = model.focus_width + model.spread_width * phenotype.severity
    focal = np.exp(-0.5 * ((position - model.focus(phenotype.onset_region)) / width) ** 2)
    labels = anatomy.labels[tuple(index.T)]
    side = np.where(np.isin(labels, landmarks.PRECENTRAL_RIGHT), phenotype.side_weight("right"), phenotype.side_weight("left"))
    weight = np.zeros(anatomy.labels.shape, dtype=np.float32)
    weight[tuple(index.T)] = focal * side
    return weight


def corticospinal_weight(anatomy: Anatomy, phenotype: PatientPhenotype, model: DiseaseModel) -> np.ndarray:
    """Per-voxel CST involvement ∈ [0, 1]: Gaussian tube around each tract, white matter only."""
    tissue = anatomy.mask(landmarks.CST_TISSUE)
    keep = np.ones(anatomy.labels.shape, dtype=np.float32)
    for side in ("right", "left"):
        path = landmarks.corticospinal_path(anatomy, side)
        index, distance = landmarks.distance_to_path(anatomy, tissue, path, 3 * model.cst_radius_mm)
        tube = np.exp(-0.5 * (distance / model.cst_radius_mm) ** 2) * phenotype.side_weight(side)
        keep[tuple(index.T)] *= 1.0 - tube
    return 1.0 - keep


def pial_csf_weight(anatomy: Anatomy, motor: np.ndarray, model: DiseaseModel) -> np.ndarray:
    """CSF (and non-brain) voxels on the pial side of the affected gyrus, carrying its weight.

    Cortical thinning moves the pial surface inwards while the grey/white boundary stays:
    we grow the CSF next to the gyrus into it, rather than shrinking the gyrus from both sides
    (which would also push bright white matter into the cortex).
    """
    csf = anatomy.mask(landmarks.CSF_OUTSIDE_BRAIN_TISSUE)
    radius = np.maximum(np.round(model.pial_reach_mm / anatomy.voxel_size).astype(int), 1)
    present = np.argwhere(motor > 0)
    weight = np.zeros_like(motor)
    if len(present) == 0:
        return weight
    low = np.maximum(present.min(axis=0) - radius - 1, 0)
    high = np.minimum(present.max(axis=0) + radius + 2, motor.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    grid = np.indices(2 * radius + 1).reshape(3, -1).T - radius
    footprint = np.zeros(2 * radius + 1, dtype=bool)
    footprint[tuple(grid[((grid * anatomy.voxel_size) ** 2).sum(axis=1) <= model.pial_reach_mm**2].T)] = True
    weight[box] = ndimage.grey_dilation(motor[box], footprint=footprint) * csf[box]
    return weight


def csf_intensity(anatomy: Anatomy) -> float:
    """T1 intensity of pure CSF: a low percentile of the ventricles and sulcal CSF (partial
    volume at 2 mm makes their median far too bright)."""
    values = anatomy.image[anatomy.mask(landmarks.LATERAL_VENTRICLES + landmarks.SULCAL_CSF)]
    return float(np.percentile(values, 10))


def apply_disease(
    anatomy: Anatomy, phenotype: PatientPhenotype, model: DiseaseModel = DiseaseModel()
) -> tuple[np.ndarray, np.ndarray]:
    """Return (image with the intensity effects, pull-back displacement in mm (3, *shape))."""
    s = float(np.clip(phenotype.severity, 0.0, 1.0))
    image = anatomy.image.astype(np.float32, copy=True)
    voxel_size = anatomy.voxel_size
    motor = motor_cortex_weight(anatomy, phenotype, model)

    # Grey-matter loss at 2 mm shows up as more CSF inside the cortical voxels (partial volume).
    fraction = model.precentral_csf_fraction * s * motor
    image = image * (1 - fraction) + csf_intensity(anatomy) * fraction
    # Tract degeneration (demyelination, gliosis) lengthens T1: darker white matter on T1w.
    image *= 1 - model.cst_signal_drop * s * corticospinal_weight(anatomy, phenotype, model)

    # Local effects as one stationary velocity field, exponentiated so that it cannot fold.
    pial = pial_csf_weight(anatomy, motor, model)
    velocity = structure_displacement(pial, model.precentral_shrink_mm * s, model.precentral_sigma_mm, voxel_size)
    ventricles = anatomy.mask(landmarks.LATERAL_VENTRICLES).astype(np.float32)
    velocity += structure_displacement(ventricles, model.ventricle_growth_mm * s, model.ventricle_sigma_mm, voxel_size)
    local = exponentiate(velocity, voxel_size)
    # Global atrophy is a near-uniform scaling (Jacobian ≈ (1 - shrink)³ > 0): added directly.
    return image, local + atrophy_displacement(anatomy.labels > 0, model.global_shrink * s, voxel_size)
