"""The DAE variants side by side: which DAE preset's deviations find the disease, on more than one
disease setting (more than one, so no variant is tuned to one setting's strongest effect). Writes benchmarks/results/directions.md (+ directions.json) and, per preset and
setting, the whole survival benchmark under benchmarks/results/directions/.

    python -m benchmarks.bench_directions                          # default grid, resumable
    python -m benchmarks.bench_directions --presets tiny tiny-age --diseases als
    python -m benchmarks.bench_directions --render-only            # directions.md from the saved runs

Each (preset, disease setting) is one `benchmarks.bench_survival` run (the same cohort seeds,
patients per anatomy, DAE steps, folds and survival draws for every cell), on cohorts shared by
every preset of a setting (one --work). With the same cohort seed every setting has the same
controls and patients (`ndae cohort --disease`), so the settings differ only in what the disease
does to the images. Finished `ndae evaluate` runs are kept (`--reuse-runs`): a killed grid resumes.

The section (`benchmarks/directions_report.py`) states the goal's three points per cell from the
numbers: the best single NDAE score's |ρ| with severity against 0.6 and the baselines; the
paired differences of covariates + NDAE against covariates and against covariates + the
voxel-wise baseline (risk concordance and expected C, 95 % t-intervals over cohort seeds); the
cosine hazard ratio's CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import bench_survival

RESULTS = Path(__file__).resolve().parent / "results"
CELLS = RESULTS / "directions"
DEFAULT_PRESETS = ("tiny", "tiny-age", "tiny-native", "tiny+image30")
DEFAULT_DISEASES = ("als", "cortex-only")
DEFAULT_STEPS = 200


def parse_variant(variant: str) -> tuple[str, int]:
    """`PRESET` or `PRESET+imageN`: a DAE preset, and the DDIM steps of the image-space NDAE
    features (`ndae evaluate --image-deviation-steps`; 0 = none)."""
    preset, _, image = variant.partition("+")
    if not image:
        return preset, 0
    if not image.startswith("image") or not image[5:].isdigit() or int(image[5:]) < 1:
        raise SystemExit(f"--presets {variant!r}: expected PRESET or PRESET+imageN (N DDIM steps, e.g. tiny+image30)")
    return preset, int(image[5:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS),
                        help="DAE presets, each optionally with image-space features: PRESET or PRESET+imageN")
    parser.add_argument("--diseases", nargs="+", default=list(DEFAULT_DISEASES))
    parser.add_argument("--cohort-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--patients-per-anatomy", type=int, default=4)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help="DAE training steps (every preset; cells with other steps are named PRESET@STEPS)")
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-subjects", type=int, default=None, help="smoke runs")
    parser.add_argument("--extra", default="", help="more bench_survival options, e.g. '--autoencoder-steps 2'")
    parser.add_argument("--work", default="/tmp/ndae-directions")
    parser.add_argument("--results", type=Path, default=RESULTS / "directions.md")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    cells_dir = args.results.parent / args.results.stem
    if not args.render_only:
        for disease in args.diseases:
            for variant in args.presets:
                preset, image_steps = parse_variant(variant)
                started = time.perf_counter()
                steps = "" if args.steps == DEFAULT_STEPS else f"@{args.steps}"
                out = cells_dir / f"{variant}{steps}_{disease}.md"
                cell = ["--preset", preset, "--image-deviation-steps", str(image_steps), "--disease", disease, "--cohort-seeds", *map(str, args.cohort_seeds),
                        "--patients-per-anatomy", str(args.patients_per_anatomy), "--steps", str(args.steps),
                        "--draws", str(args.draws), "--folds", str(args.folds), "--threads", str(args.threads),
                        "--work", args.work, "--out", str(out), "--reuse-runs", "--share-dae", "--quiet", *args.extra.split()]
                if args.max_subjects:
                    cell += ["--max-subjects", str(args.max_subjects)]
                print(f"[bench_directions] {variant} on {disease}", flush=True)
                bench_survival.main(cell)
                print(f"[bench_directions] {variant} on {disease}: {time.perf_counter() - started:.0f} s", flush=True)
    from benchmarks.directions_report import write as write_report

    print(write_report(cells_dir, args.results).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
