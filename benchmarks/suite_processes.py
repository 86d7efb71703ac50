"""Where a whole test run's CPU goes, by process kind and by test module.

    python -m benchmarks.suite_processes [pytest options]    (runs `bash run.sh test` with them)

The suite keeps both cores busy, so its wall time is its CPU work over two. pytest's own
`--durations` are wall times on a shared machine; this reads CPU-seconds instead:
- every process on the machine, sampled from /proc/<pid>/stat every 0.25 s (a process's last
  reading counts; one that lives less than a sample is missed), grouped by what it runs
  (pytest worker, flwr-clientapp, flower-superlink, Ray, ...);
- each test's own CPU in its worker (`benchmarks.pytest_cpu`), summed per module.
Run it on a machine with nothing else running. Raw rows are appended to
benchmarks/results/suite_processes.jsonl, pytest's output is in $TMPDIR/ndae-suite-processes.log.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "suite_processes.jsonl"
LOG = Path(tempfile.gettempdir()) / "ndae-suite-processes.log"
TICK = os.sysconf("SC_CLK_TCK")
KINDS = (  # first match of the command line wins
    ("flwr-clientapp", "flwr-clientapp"), ("approved_clientapp", "flwr-clientapp"), ("flwr-serverapp", "flwr-serverapp"),
    ("flower-superexec", "flower-superexec"), ("flower-superlink", "flower-superlink"),
    ("flower-supernode", "flower-supernode"), ("flwr ", "flwr CLI"), ("/flwr\0", "flwr CLI"),
    ("ray::", "ray workers"), ("raylet", "ray: raylet"), ("gcs_server", "ray: gcs_server"),
    ("dashboard/agent", "ray: dashboard agent"), ("runtime_env/agent", "ray: runtime_env agent"),
    ("log_monitor", "ray: log_monitor"), ("dashboard", "ray: dashboard"), ("ray/", "ray: other"),
    ("sys.stdin.readline", "pytest workers"), ("xdist", "pytest workers"), ("pytest", "pytest (main)"),
)


def _kind(cmdline: bytes) -> str:
    text = cmdline.decode(errors="replace")
    for needle, kind in KINDS:
        if needle in text:
            return kind
    argv = [a for a in text.split("\0") if a]
    name = (argv[0].rsplit("/", 1)[-1] if argv else "?")
    if name.startswith("python") and len(argv) > 1:  # the script or module it runs
        name += " " + (argv[2] if argv[1] in ("-m", "-c") and len(argv) > 2 else argv[1]).rsplit("/", 1)[-1]
    return name[:60]


def _processes() -> dict[tuple[str, str], float]:
    """{(pid, start time): CPU-seconds so far} of every process now running; a pid reused by a
    later process has another start time, so it is another key."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            out[(pid, fields[19])] = (int(fields[11]) + int(fields[12])) / TICK  # starttime; utime + stime
        except (OSError, ValueError, IndexError):
            pass
    return out


def _sample(seen: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        for key, cpu in _processes().items():
            if key not in seen:
                try:
                    seen[key] = [_kind(Path(f"/proc/{key[0]}/cmdline").read_bytes()), cpu]
                except OSError:
                    continue
            seen[key][1] = cpu
        stop.wait(0.25)


def main(argv: list[str]) -> int:
    from benchmarks.common import append_raw_row

    seen: dict = {}
    stop = threading.Event()
    before = set(_processes())
    with tempfile.TemporaryDirectory() as tmp:
        per_test = Path(tmp) / "tests.jsonl"
        env = {**os.environ, "NDAE_TEST_CPU_FILE": str(per_test)}
        sampler = threading.Thread(target=_sample, args=(seen, stop), daemon=True)
        sampler.start()
        started = time.monotonic()
        with open(LOG, "w") as log:  # pytest's own output, kept for its failures
            done = subprocess.run(["bash", "run.sh", "test", "-p", "benchmarks.pytest_cpu", *argv], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        wall = time.monotonic() - started
        stop.set()
        sampler.join()
        tests = [json.loads(line) for line in per_test.read_text().splitlines()] if per_test.exists() else []
    kinds: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    for key, (kind, cpu) in seen.items():
        if key in before:
            continue  # running before the suite: not its work
        kinds[kind] += cpu
        counts[kind] += 1
    modules: dict[str, float] = collections.Counter()
    for row in tests:
        modules[row["module"]] += row["cpu_s"]
    last = (LOG.read_text().strip().splitlines() or [""])[-1]
    row = {"rc": done.returncode, "wall_s": round(wall, 1), "pytest": last,
           "kinds": {k: [round(v, 1), counts[k]] for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
           "modules": {k: round(v, 1) for k, v in sorted(modules.items(), key=lambda kv: -kv[1])},
           "top_tests": {r["test"]: r["cpu_s"] for r in sorted(tests, key=lambda r: -r["cpu_s"])[:60]}}
    row = append_raw_row(RESULTS, row)
    print(f"{last} (pytest's output: {LOG})\nwall {wall:.0f} s; CPU-seconds by process kind [processes]:")
    for kind, (cpu, n) in list(row["kinds"].items())[:20]:
        print(f"  {cpu:8.1f}  {kind} [{n}]")
    print("tests' own CPU-seconds in their worker, by module:")
    for module, cpu in list(row["modules"].items())[:30]:
        print(f"  {cpu:8.1f}  {module}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
