"""pytest plugin: CPU-seconds of each test in the process that runs it, for `benchmarks.suite_processes`.

    python -m pytest -p benchmarks.pytest_cpu ...   (NDAE_TEST_CPU_FILE=PATH: one JSON line per test)

A test's CPU is its worker's own (getrusage SELF) plus that of the children it waited for
(getrusage CHILDREN) over setup, call and teardown; detached processes (Flower's ClientApps,
Ray's workers) are not in it: `benchmarks.suite_processes` reads those from /proc.
"""

from __future__ import annotations

import json
import os
import resource

import pytest


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get("NDAE_TEST_CPU_FILE")
    before = _cpu()
    yield
    if path:
        row = {"test": item.nodeid, "module": item.nodeid.split("::")[0], "cpu_s": round(_cpu() - before, 3),
               "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}
        with open(path, "a") as handle:  # one short line per write: appends from two workers do not interleave
            handle.write(json.dumps(row) + "\n")
