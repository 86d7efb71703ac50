"""`ndae prepare` with one job vs N jobs, same scans, same run: scans per minute and their ratio.

    python -m benchmarks.bench_prepare [--ixi ../shared/data/ixi] [--subjects 4] [--jobs N]

Each IXI scan is prepared from scratch with its DLMUSE mask (skull-strip, normalise, ANTs affine
registration to MNI152, resample), first serially (one job: the process's default threads), then
with `--jobs` worker processes of one thread each (default: the cores there are, at most 32).
Writes `results/prepare.json` (raw timings, load average before and after, whether the two caches
are byte-identical) and `results/prepare.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import RESULTS_DIR, provenance, write_section
from ndae.data.cache import prepare_manifest
from ndae.data.manifest import validate_manifest
from ndae.data.prepare_pool import default_prepare_jobs
from ndae.io import atomic_write_json


def ixi_manifest(ixi: Path, subjects: int) -> pd.DataFrame:
    demographics = pd.read_csv(ixi / "demographics.csv", dtype={"subject": str}).sort_values("subject")
    rows = []
    for row in demographics.itertuples():
        image, mask = ixi / "T1" / f"{row.subject}_T1.nii.gz", ixi / "labels" / f"{row.subject}_T1_DLMUSE.nii.gz"
        if image.exists() and mask.exists():
            rows.append({"subject": row.subject, "site": "IXI", "image": str(image), "age": row.age, "sex": row.sex,
                         "group": "control", "mask": str(mask)})
        if len(rows) == subjects:
            break
    return validate_manifest(pd.DataFrame(rows), source=str(ixi))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the workers, once the pool is shut)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(manifest: pd.DataFrame, out: Path, jobs: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all processes) of preparing `manifest` from scratch."""
    started, cpu = time.perf_counter(), cpu_seconds()
    counts = prepare_manifest(manifest, out, progress=False, jobs=jobs)
    assert counts == {"prepared": len(manifest), "cached": 0}, counts
    return time.perf_counter() - started, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ixi", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=default_prepare_jobs())
    parser.add_argument("--section", default="prepare")
    args = parser.parse_args()
    manifest = ixi_manifest(args.ixi, args.subjects)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as scratch:
        serial, serial_cpu = timed(manifest, Path(scratch) / "serial", 1)
        parallel, parallel_cpu = timed(manifest, Path(scratch) / "parallel", args.jobs)
        names = sorted(p.name for p in (Path(scratch) / "serial").iterdir())
        identical = [n for n in names if (Path(scratch) / "serial" / n).read_bytes()
                     == (Path(scratch) / "parallel" / n).read_bytes()]
    load_after = os.getloadavg()
    n = len(manifest)
    result = {
        **provenance(), "subjects": n, "jobs": args.jobs, "cores": os.cpu_count(),
        "serial_seconds": serial, "parallel_seconds": parallel,
        "serial_scans_per_minute": 60 * n / serial, "parallel_scans_per_minute": 60 * n / parallel,
        "serial_cpu_seconds": serial_cpu, "parallel_cpu_seconds": parallel_cpu,
        "serial_cores_used": serial_cpu / serial, "parallel_cores_used": parallel_cpu / parallel,
        "speedup": serial / parallel, "load_average_before": load_before, "load_average_after": load_after,
        "files": len(names), "files_byte_identical": len(identical),
    }
    atomic_write_json(RESULTS_DIR / f"{args.section}.json", result)
    body = (
        f"| jobs | seconds for {n} scans | scans per minute | CPU seconds | cores it got (CPU s / wall s) |\n"
        "|---|---|---|---|---|\n"
        f"| 1 | {serial:.1f} | {result['serial_scans_per_minute']:.2f} | {serial_cpu:.1f} | {serial_cpu / serial:.2f} |\n"
        f"| {args.jobs} | {parallel:.1f} | {result['parallel_scans_per_minute']:.2f} | {parallel_cpu:.1f} "
        f"| {parallel_cpu / parallel:.2f} |\n\n"
        f"Speed-up {result['speedup']:.2f}× with {args.jobs} jobs on {os.cpu_count()} cores. "
        f"Load average (1, 5, 15 min) {', '.join(f'{v:.1f}' for v in load_before)} before and "
        f"{', '.join(f'{v:.1f}' for v in load_after)} after: the machine was "
        f"{'shared with other work; the cores each run got (CPU s / wall s) say how much of the machine it had' if load_before[0] > 1 else 'otherwise idle'}. "
        "The parallel run's CPU seconds include each worker's start (importing ANTs and loading the template). "
        f"{len(identical)} of {len(names)} cache files byte-identical between the two runs"
        ". "
        "IXI scans with their DLMUSE masks, prepared from scratch: skull-strip, normalise, ANTs affine "
        "registration to MNI152 2 mm, resample.\n"
    )
    print(json.dumps(result, indent=2))
    print(write_section(args.section, "`ndae prepare`: one job vs several (`benchmarks/bench_prepare.py`)", body))


if __name__ == "__main__":
    main()
