"""Shared fixtures. IXI scans come from ../shared/data/ixi beside the repository where it exists
(CI), else they are made from the demo data the package ships (tests/ixi_data.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ixi_data import MissingTestData, resolve_ixi_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ixi_dir(tmp_path_factory) -> Path:
    try:
        folder, _ = resolve_ixi_dir(tmp_path_factory.mktemp("ixi-source"))
    except MissingTestData as error:
        pytest.fail(str(error))
    return folder


@pytest.fixture(autouse=True, scope="session")
def _private_ndae_cache(tmp_path_factory):
    # Prepared caches are keyed by the manifest's path, and every test writes its manifests under
    # a new tmp folder: pointed at ~/.cache/ndae they would pile up there run after run.
    previous = os.environ.get("NDAE_CACHE")
    os.environ["NDAE_CACHE"] = str(tmp_path_factory.mktemp("ndae-cache"))
    yield
    if previous is None:
        os.environ.pop("NDAE_CACHE", None)
    else:
        os.environ["NDAE_CACHE"] = previous


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    # CI has 2 cores and the suite two workers: one intra-op thread each keeps them from fighting over the cores.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield


# ---- the toy cohort `ndae evaluate` is checked on (tests/test_evaluate*.py) ------------------------
@pytest.fixture(scope="session")
def evaluation_toy_cohort(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, truth) of the toy cohort with the generator's truth columns: read only. Its
    prepared subjects sit in the manifest's default cache, shared by every test that reads it."""
    from ndae.testing.toy_cohort import write_toy_cohort
    from tests.test_evaluate import add_cohort_truth

    # 12 controls: a quarter held out still leaves the 9 the normative models need
    manifest, truth = write_toy_cohort(tmp_path_factory.mktemp("toy"), n_controls=12, n_patients=22, seed=0,
                                       onset_column=True)
    add_cohort_truth(truth)
    return manifest, truth


# ---- one small in-process federation, read by every file that checks a whole run -----------------
@pytest.fixture(scope="session")
def federation_cohort(tmp_path_factory) -> Path:
    from tests.federation_runs import make_cohort

    return make_cohort(tmp_path_factory.mktemp("federation"))


@pytest.fixture(scope="session")
def pooled_federation(federation_cohort):
    """(summary, run folder) of the shared pooled run (tests/federation_runs.py): read only."""
    from tests.federation_runs import pooled_run

    return pooled_run(federation_cohort)


@pytest.fixture(scope="session")
def federated_federation(federation_cohort, pooled_federation):
    """(summary, run folder) of the shared federated run, resumed from the pooled run's DAE: read only."""
    from tests.federation_runs import federated_run

    return federated_run(federation_cohort, pooled_federation[1])


# ---- two workers (`bash run.sh test` runs pytest-xdist with --dist loadgroup) ---------------------
# loadgroup keeps a group on one worker by suffixing the test ids, which pytest 9.2 no longer reads
# (pyproject.toml pins pytest below it; tests/test_xdist_groups.py checks the groups hold).
# Cheap session fixtures every module may use: sharing them is no reason to keep modules together.
CHEAP_SESSION_FIXTURES = {"ixi_dir"}


def _expensive_session_fixtures(item) -> set[str]:
    """The non-autouse session fixtures of this conftest (or tests/) that `item` uses."""
    names = set()
    for name in item.fixturenames:
        definitions = item._fixtureinfo.name2fixturedefs.get(name)
        if not definitions or name in CHEAP_SESSION_FIXTURES:
            continue
        definition = definitions[-1]
        # autouse ones are used by every test (`_autouse`: pytest >= 8.1; without it every module
        # would be one group: slower, never wrong)
        if getattr(definition, "_autouse", False):
            continue
        if definition.scope == "session" and getattr(definition.func, "__module__", "").startswith("tests"):
            names.add(name)
    return names


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under xdist, each test runs on the worker of its group: its module (module fixtures run
    once), merged with every module that shares an expensive session fixture with it (that
    fixture runs once). Modules holding a `slow` test are handed out first, so that the longest
    work does not start last on one worker while the other idles."""
    # the controller sees `-n`; a worker (where the groups are read) sees only its own id
    if not (getattr(config.option, "numprocesses", None) or os.environ.get("PYTEST_XDIST_WORKER")):
        return
    modules = {item.module.__name__: None for item in items}  # collection order
    parent = {module: module for module in modules}

    def root(module):
        while parent[module] != module:
            parent[module] = parent[parent[module]]
            module = parent[module]
        return module

    owner: dict[str, str] = {}
    for item in items:
        for fixture in _expensive_session_fixtures(item):
            first = owner.setdefault(fixture, item.module.__name__)
            parent[root(item.module.__name__)] = root(first)
    slow_groups = {root(item.module.__name__) for item in items if item.get_closest_marker("slow")}
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(root(item.module.__name__)))
    items.sort(key=lambda item: root(item.module.__name__) not in slow_groups)  # stable: order kept within
