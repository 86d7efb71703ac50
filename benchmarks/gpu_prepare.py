"""CPU half of the GPU NDAE run: one file holding everything `benchmarks.gpu_ndae` needs on a lent
GPU machine that has torch but not the imaging stack (no cohort generator, no NIfTI reading).

Writes one compressed npz (default `build/gpu-carry/cohort.npz`; `build/` is git-ignored, so the
device call names it in `carry`) with, per subject of the cohort's manifest, in manifest order:
`images` (the prepared axial slices, float16, [n, C, H, W]), `subject`, `site`, `age`, `sex`,
`group`, `held_out` (the controls `ndae evaluate` keeps out of every fit, with the same fraction
and seed, so the GPU run trains on exactly the training controls a CPU run would), `atlas_slices`
(the population atlas on the slices, for the regional prior residuals) and `meta` (JSON: the
manifest's sha256, the held-out rule, the slice positions). Also writes the nibabel wheel into
`build/gpu-carry/wheels/` (the one package of the imaging stack the device-side code imports:
`ndae.baselines.voxelwise`'s region names come with it) unless `--no-wheels`.

    python -m benchmarks.gpu_prepare [--cohort DIR] [--cache DIR] [--out build/gpu-carry/cohort.npz]

Without --cohort it builds (or reuses) the project's standard bench cohort: cohort seed 0, 4
patients per anatomy = 240 patients, under --work, as `benchmarks.bench_survival` does.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ndae.errors import NdaeError
from ndae.io import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "build" / "gpu-carry" / "cohort.npz"
# The device call's whole working tree (tracked files and carried paths) travels under 64 MiB; the
# tracked tree already takes most of it, so the carried file must stay small.
CARRY_LIMIT_BYTES = 14 * 2**20
FORMAT = 1  # the npz layout version gpu_ndae checks
TRAVEL_LIMIT_BYTES = 64 * 2**20  # the device call's working tree + carry


def travel_bytes(carry_folder: Path) -> int:
    """What a device call would send: the tracked and untracked-but-not-ignored files of the
    checkout, plus the carried folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True)
    if listed.returncode != 0:
        return sum(p.stat().st_size for p in carry_folder.rglob("*") if p.is_file())
    files = [REPO / name for name in listed.stdout.decode().split("\0") if name]
    tree = sum(p.stat().st_size for p in files if p.is_file())
    return tree + sum(p.stat().st_size for p in carry_folder.rglob("*") if p.is_file())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def standard_cohort(work: Path, jobs: int) -> Path:
    """The bench cohort (seed 0, 4 patients per anatomy), made by bench_survival's own rule."""
    from benchmarks import bench_survival
    from ndae.cohort.disease import DEFAULT_DISEASE

    # bench_survival's defaults (4 sites, the demo's healthy scans, the default disease)
    args = argparse.Namespace(cohort=None, work=str(work), patients_per_anatomy=4, max_subjects=None,
                              disease=DEFAULT_DISEASE, healthy=None, prepared=None, demographics=None, sites=4,
                              jobs=jobs)
    return bench_survival.make_cohort(args, 0)


def build_carry(manifest: Path, cache: Path | None, held_out_fraction: float, seed: int) -> tuple[bytes, dict]:
    """The npz bytes and its meta for the manifest's subjects."""
    from ndae.data.cache import default_cache_dir, load_prepared
    from ndae.data.dataset import load_slice_dataset
    from ndae.deviation.image_features import atlas_on_slices
    from ndae.evaluation.held_out import held_out_controls

    cache = cache or default_cache_dir(manifest)
    data = load_slice_dataset(manifest, cache, progress=False)
    held = set(held_out_controls(data.manifest, held_out_fraction, seed))
    slice_z_mm = np.asarray(load_prepared(cache, str(data.subjects[0])).slice_z_mm, float)
    meta = {"format": FORMAT, "manifest": str(manifest.resolve()), "manifest_sha256": sha256_file(manifest),
            "held_out_controls": held_out_fraction, "seed": seed, "slice_z_mm": slice_z_mm.tolist(),
            "subjects": int(len(data.subjects)), "image_shape": list(data.images.shape[1:])}
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, images=data.images.astype(np.float16), subject=np.asarray(data.subjects).astype(str),
        site=np.asarray(data.sites).astype(str), age=np.asarray(data.ages, np.float32),
        sex=np.asarray(data.sexes).astype(str), group=np.asarray(data.groups).astype(str),
        held_out=np.array([str(s) in held for s in data.subjects]), atlas_slices=atlas_on_slices(slice_z_mm),
        meta=np.array(json.dumps(meta)))
    return buffer.getvalue(), meta


def download_wheels(folder: Path) -> list[str]:
    """The nibabel wheel (pure Python) of the version installed here, for the device's Python 3.12."""
    import importlib.metadata

    version = importlib.metadata.version("nibabel")
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "-d", str(folder), f"nibabel=={version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise NdaeError(f"pip download nibabel=={version} failed: {done.stderr.strip().splitlines()[-1:]}")
    return sorted(p.name for p in folder.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=None, help="a cohort folder (manifest.csv); default: the bench cohort")
    parser.add_argument("--cache", type=Path, default=None, help="its prepared-subject cache (default: the manifest's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ndae-directions"),
                        help="where the bench cohort is made or found (bench_survival's --work)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--held-out-controls", type=float, default=0.25, help="as `ndae evaluate` (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="as `ndae evaluate --seed` (the held-out draw)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--no-wheels", action="store_true", help="do not download the nibabel wheel")
    args = parser.parse_args(argv)
    try:
        cohort = args.cohort or standard_cohort(args.work, args.jobs)
        manifest = cohort / "manifest.csv"
        if not manifest.is_file():
            raise NdaeError(f"--cohort {cohort}: no manifest.csv")
        cache = args.cache or (args.work / f"cache-{cohort.name}" if args.cohort is None else None)
        payload, meta = build_carry(manifest, cache, args.held_out_controls, args.seed)
        if len(payload) > CARRY_LIMIT_BYTES:
            raise NdaeError(f"{args.out}: {len(payload) / 2**20:.1f} MiB, over the {CARRY_LIMIT_BYTES / 2**20:.0f} MiB "
                            "the device call can carry beside the tracked tree")
        atomic_write_bytes(args.out, payload)
        wheels = [] if args.no_wheels else download_wheels(args.out.parent / "wheels")
        travel = travel_bytes(args.out.parent)
        if travel > TRAVEL_LIMIT_BYTES:
            raise NdaeError(f"the device call would send {travel / 2**20:.1f} MiB (checkout + {args.out.parent}), over "
                            f"the {TRAVEL_LIMIT_BYTES / 2**20:.0f} MiB it carries: shrink the checkout's untracked files")
    except NdaeError as error:
        raise SystemExit(f"gpu_prepare: {error}")
    print(json.dumps({"out": str(args.out), "mib": round(len(payload) / 2**20, 2), "subjects": meta["subjects"],
                      "manifest": meta["manifest"], "wheels": wheels, "device_call_mib": round(travel / 2**20, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
