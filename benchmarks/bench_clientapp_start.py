"""The start of a site's ClientApp process, this checkout against an earlier commit, in one run.

Flower starts a fresh `flwr-clientapp` process for every message at every site (the deployed
SuperNode's default `--isolation subprocess`); what it imports before it answers is paid per
message. Each sample is a new process doing what such a process does before it answers a Cox
query: our wrapper (`ndae.deploy.approved_clientapp`, to Flower's argument parsing, here
`--help`), then the app module and the modules a Cox query needs. Samples alternate between this
checkout and a `git worktree` of BASELINE (default: 5f5e378, before the import changes), so both
see the same machine; CPU-seconds of each child from getrusage.

    python -m benchmarks.bench_clientapp_start [BASELINE] [SAMPLES]
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "clientapp_start.jsonl"
CHILD = """
import sys
sys.argv = ["flwr-clientapp", "--help"]
from ndae.deploy import approved_clientapp
try:
    approved_clientapp.main()
except SystemExit:
    pass
import client.client_app, ndae.survival.federated_cox, ndae.deviation.scores, ndae.data.cache
from ndae.federation.site import survival_queries
"""


def _child_cpu(checkout: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    subprocess.run([sys.executable, "-c", CHILD], cwd=checkout, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main(argv: list[str]) -> int:
    baseline = argv[0] if argv else "5f5e378"
    samples = int(argv[1]) if len(argv) > 1 else 10
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            _child_cpu(old), _child_cpu(ROOT)  # warm: bytecode compiled, files in the page cache
            times: dict[str, list[float]] = {"baseline": [], "this": []}
            for _ in range(samples):
                times["baseline"].append(_child_cpu(old))
                times["this"].append(_child_cpu(ROOT))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    from benchmarks.common import append_raw_row

    median = {k: statistics.median(v) for k, v in times.items()}
    row = append_raw_row(RESULTS, {
        "baseline": baseline, "samples": samples, "cpu_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in median.items()}, "ratio": round(median["baseline"] / median["this"], 2)})
    print(f"ClientApp process start to a Cox query's imports, median CPU-s over {samples}: "
          f"{baseline} {median['baseline']:.2f}, {row['commit']} {median['this']:.2f} ({row['ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
