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
    # CI has 2 cores; tests run in one process, so one intra-op thread keeps timings stable.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield
