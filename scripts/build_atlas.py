"""Build the voxel-wise baseline's population atlas from DLMUSE label maps on the MNI grid.

Each subject's MUSE label map is brought to the 2 mm MNI output grid exactly as `ndae prepare`
moves it (ndae.data.preprocess.prepare_subject: DLMUSE brain mask → ANTs affine registration to
MNI152 → `genericLabel` resampling). The shipped demo data's label maps were moved that way when
it was built (scripts/build_demo_data.py), so they are used as they are; a label map not on the
grid is prepared first. The MUSE ids are grouped into `ndae.baselines.voxelwise.ATLAS_REGIONS`
and the atlas is the voxel-wise majority vote over subjects (background included as a
candidate), stored as int8 compressed NIfTI with its attribution note beside it.

    python scripts/build_atlas.py                      # the shipped IXI demo data
    python scripts/build_atlas.py --manifest m.csv     # any manifest with a `mask` column
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ndae.baselines.voxelwise import ATLAS_PATH, ATLAS_REGIONS, OTHER_BRAIN, REGION_NAMES, majority_vote, muse_to_regions
from ndae.data.template import output_grid
from ndae.errors import NdaeError
from ndae.io import atomic_write_bytes, atomic_write_text

ATTRIBUTION = """# Population region atlas (derived from IXI DLMUSE label maps)

`ixi_dlmuse_regions.nii.gz`: int8 region ids on ndae-fed's 80 x 96 x 80 grid at 2 mm in MNI152
space, the voxel-wise majority vote over {subjects} healthy IXI subjects' DLMUSE label maps after the
project's affine registration to MNI152 (scripts/build_atlas.py). Used by the voxel-wise normative
baseline (ndae/baselines/voxelwise.py), which needs no per-subject labels.

Regions (id: name: MUSE label ids):
{regions}

Source: IXI dataset, https://brain-development.org/ixi-dataset/ - licensed under Creative Commons
Attribution-ShareAlike 3.0 (CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/).
DLMUSE label maps from the NiChart_Project repository (CBICA, University of Pennsylvania),
test_data/processed/IXI. This derived atlas is distributed under the same licence, CC BY-SA 3.0.
"""


def grid_labels(row: pd.Series, base: Path) -> np.ndarray:
    """The row's label map on the output grid (prepared like `ndae prepare` when it is not)."""
    grid = output_grid()
    mask_path = base / str(row["mask"])
    labels = nib.load(str(mask_path))
    if grid.matches(labels):
        return np.asarray(labels.dataobj).astype(np.int16)
    from ndae.data.preprocess import PrepareConfig, prepare_subject

    prepared = prepare_subject(str(base / str(row["image"])), str(mask_path), str(row["subject"]), PrepareConfig(registration="affine"))
    return prepared.labels


def region_table() -> str:
    lines = [f"- {k}: {name}: {', '.join(map(str, ids))}" for k, (name, ids) in ATLAS_REGIONS.items()]
    lines.append(f"- {OTHER_BRAIN}: {REGION_NAMES[OTHER_BRAIN]}: every other MUSE tissue label (not 1, sulcal CSF)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=None, help="manifest with image and mask columns (default: the shipped demo data)")
    parser.add_argument("--out", type=Path, default=ATLAS_PATH)
    args = parser.parse_args()

    if args.manifest is None:
        from ndae.data.demo import demo_manifest_path

        args.manifest = demo_manifest_path()
    manifest = pd.read_csv(args.manifest, dtype=str)
    if "mask" not in manifest.columns or manifest["mask"].isna().any():
        raise NdaeError(f"{args.manifest}: every row needs a `mask` (DLMUSE label map) to build the atlas")
    base = args.manifest.parent
    atlas, count = majority_vote(muse_to_regions(grid_labels(row, base)) for _, row in manifest.iterrows())

    grid = output_grid()
    image = nib.Nifti1Image(atlas, grid.affine)
    image.header.set_data_dtype(np.int8)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(grid.affine, code=4)  # 4 = MNI152
    image.set_qform(grid.affine, code=4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import gzip

    atomic_write_bytes(args.out, gzip.compress(image.to_bytes(), compresslevel=9, mtime=0))  # mtime 0: reproducible
    atomic_write_text(args.out.parent / "README.md", ATTRIBUTION.format(subjects=count, regions=region_table()))
    voxels = {REGION_NAMES[k]: int((atlas == k).sum()) for k in REGION_NAMES}
    print(json.dumps({"atlas": str(args.out), "subjects": count, "bytes": args.out.stat().st_size, "voxels": voxels}, indent=1))


if __name__ == "__main__":
    main()
