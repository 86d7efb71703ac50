"""Build the shipped demo data set from the IXI scans in ../shared/data/ixi.

Each of the 121 healthy subjects is prepared by the project's own pipeline (RAS, DLMUSE brain
mask, skull-strip, percentile normalisation, ANTs affine registration to MNI152, 80x96x80 grid at
2 mm), stored as 7-bit NIfTI (the IXI originals are 8-bit) with its DLMUSE label map on the same
grid, and packed into one xz-compressed tar (`ndae/demo_data/ixi_demo.tar.xz`) with a manifest
and the IXI attribution/licence. `ndae.data.demo` unpacks it on first use.

    python scripts/build_demo_data.py --ixi ../shared/data/ixi --work /tmp/ndae-demo-build [--jobs 2]
"""

from __future__ import annotations

import argparse
import io
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ndae.data.cache import load_prepared, prepare_manifest
from ndae.data.demo import DEMO_ARCHIVE, DEMO_README
from ndae.data.manifest import validate_manifest
from ndae.io import atomic_write_bytes


LEVELS = 128


def ixi_manifest(ixi_dir: Path) -> pd.DataFrame:
    demographics = pd.read_csv(ixi_dir / "demographics.csv", dtype={"subject": str, "sex": str})
    rows = [
        {
            "subject": row.subject,
            "site": "IXI-HH",
            "image": str(ixi_dir / "T1" / f"{row.subject}_T1.nii.gz"),
            "age": row.age,
            "sex": row.sex,
            "group": "control",
            "mask": str(ixi_dir / "labels" / f"{row.subject}_T1_DLMUSE.nii.gz"),
        }
        for row in demographics.itertuples()
    ]
    return validate_manifest(pd.DataFrame(rows), source=str(ixi_dir / "demographics.csv"))


def _prepare_chunk(args):
    frame, work = args
    return prepare_manifest(frame, work, progress=False)


def nifti_bytes(image: nib.Nifti1Image) -> bytes:
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(image.affine, code=4)  # 4 = MNI152
    image.set_qform(image.affine, code=4)
    return image.to_bytes()


def add_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: a reproducible archive
    archive.addfile(info, io.BytesIO(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ixi", type=Path, default=Path("../shared/data/ixi"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/ndae-demo-build"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pack-only", action="store_true", help="repack an existing --work cache without preparing")
    args = parser.parse_args()

    manifest = ixi_manifest(args.ixi)
    if not args.pack_only:
        chunks = [(manifest.iloc[i :: args.jobs], args.work) for i in range(args.jobs)]
        with ProcessPoolExecutor(args.jobs) as pool:
            for counts in pool.map(_prepare_chunk, chunks):
                print(counts)

    buffer = io.BytesIO()
    rows = []
    with tarfile.open(fileobj=buffer, mode="w:xz", preset=9) as archive:
        add_file(archive, "README.md", DEMO_README.encode())
        for row in manifest.itertuples():
            prepared = load_prepared(args.work, row.subject)
            # Caches made before pipeline v2 resampled mask and labels separately: make them agree.
            brain = (prepared.labels > 0) & (prepared.mask > 0)
            prepared.labels = np.where(brain, prepared.labels, 0)
            prepared.image = np.where(brain, prepared.image, -1.0)
            # 7-bit storage with a scale factor (128 grey levels, steps of 0.016 in [-1, 1]) keeps
            # the archive under 30 MB; reading gives back [-1, 1] with background -1.
            quantised = np.round((prepared.image + 1.0) * (LEVELS - 1) / 2.0).astype(np.uint8)
            image = nib.Nifti1Image(quantised, prepared.grid_affine)
            image.header.set_slope_inter(2.0 / (LEVELS - 1), -1.0)
            labels = nib.Nifti1Image(prepared.labels.astype(np.uint8), prepared.grid_affine)
            add_file(archive, f"images/{row.subject}_T1.nii", nifti_bytes(image))
            add_file(archive, f"labels/{row.subject}_DLMUSE.nii", nifti_bytes(labels))
            rows.append(
                {"subject": row.subject, "site": row.site, "image": f"images/{row.subject}_T1.nii",
                 "age": row.age, "sex": row.sex, "group": row.group, "mask": f"labels/{row.subject}_DLMUSE.nii"}
            )
        add_file(archive, "manifest.csv", pd.DataFrame(rows).to_csv(index=False, lineterminator="\n").encode())
    atomic_write_bytes(DEMO_ARCHIVE, buffer.getvalue())
    print(f"wrote {DEMO_ARCHIVE} ({len(buffer.getvalue()) / 1e6:.1f} MB, {len(rows)} subjects)")


if __name__ == "__main__":
    main()
