"""The shipped demo data: 121 IXI healthy subjects, prepared on the 2 mm MNI grid.

The package carries one compressed archive; it is unpacked once into the user's cache
(`$NDAE_CACHE`, default `~/.cache/ndae`) so the main job runs on a fresh machine with no
network and no access to the original IXI files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

DEMO_ARCHIVE = Path(__file__).resolve().parents[1] / "demo_data" / "ixi_demo.tar.xz"

DEMO_README = """# ndae-fed demo data (derived from IXI)

121 healthy adults (age 20-82) from the IXI data set, Hammersmith Hospital (Philips 3T),
as processed for the NiChart project (T1 at 2 mm with DLMUSE label maps), then prepared by
ndae-fed's own pipeline (scripts/build_demo_data.py): skull-stripped with the DLMUSE brain mask,
intensities normalised (1st-99th percentile inside the brain -> [-1, 1], stored with 128 grey
levels and a scale factor), affinely registered to MNI152 (ANTsPy) and resampled to an 80 x 96 x 80 grid at
2 mm. Label maps (MUSE ids, e.g. 182/183 and 150/151 precentral gyri, 51/52 lateral ventricles,
93/94 posterior limbs of the internal capsule) are on the same grid.

Source: IXI dataset, https://brain-development.org/ixi-dataset/ - licensed under Creative
Commons Attribution-ShareAlike 3.0 (CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/).
Processed copies from the NiChart_Project repository (CBICA, University of Pennsylvania),
test_data/processed/IXI. This derived demo data is distributed under the same licence, CC BY-SA 3.0.
"""


def cache_root() -> Path:
    return Path(os.environ.get("NDAE_CACHE", Path.home() / ".cache" / "ndae"))


def demo_dir() -> Path:
    """Folder with the unpacked demo data (`manifest.csv`, `images/`, `labels/`)."""
    digest = hashlib.sha256(DEMO_ARCHIVE.read_bytes()).hexdigest()[:12]
    target = cache_root() / "demo" / digest
    if (target / "manifest.csv").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unpack beside the target, then rename: a killed unpack never leaves a half folder behind.
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with tarfile.open(DEMO_ARCHIVE, "r:xz") as archive:
            archive.extractall(staging, filter="data")
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "manifest.csv").exists():
            raise
    return target


def demo_manifest_path() -> Path:
    return demo_dir() / "manifest.csv"
