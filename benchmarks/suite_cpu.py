"""CPU-seconds of test modules, each run alone: where the suite's time goes on a 2-core machine.

The suite runs on two workers that keep both cores busy (/proc/stat during a whole run: ~95 %
busy), so its wall time is about its CPU work over two: a module's CPU-seconds, not its
`--durations`, say what it costs the suite. Much of that work is in processes pytest does not
wait for (Flower's SuperExec starts the ClientApp and ServerApp processes detached, Ray its
workers), so it is read system-wide: busy jiffies of every CPU from /proc/stat, before and after.
Run it on a machine with nothing else running.

    python -m benchmarks.suite_cpu tests/test_deploy_loopback.py "tests/test_evaluate.py tests/test_evaluate_external_features.py"

Each argument is one pytest call (modules that share a session fixture belong in one). Raw
results are appended to benchmarks/results/suite_cpu.jsonl (commit, modules, rc, wall, cpu).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "suite_cpu.jsonl"


def busy_seconds() -> float:
    """Busy time of all CPUs so far (user, nice, system, irq, softirq), in seconds."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def measure(modules: str) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *shlex.split(modules)]
    busy, started = busy_seconds(), time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall, cpu = time.monotonic() - started, busy_seconds() - busy
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return {"modules": modules, "rc": done.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "cpus": os.cpu_count(), "pytest": last}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    from benchmarks.common import append_raw_row

    for modules in argv:
        row = append_raw_row(RESULTS, measure(modules))
        print(f"{row['modules']}: rc {row['rc']}, wall {row['wall_s']:.0f} s, CPU {row['cpu_s']:.0f} s "
              f"({row['cpu_s'] / max(row['wall_s'], 1e-9):.2f} cores)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
