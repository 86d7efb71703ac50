"""Shared fixtures. Real data lives in ../shared/data/ixi beside the repository (CI has it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
IXI_DIR = Path(os.environ.get("NDAE_IXI_DIR", REPO_ROOT.parent / "shared" / "data" / "ixi"))


@pytest.fixture(scope="session")
def ixi_dir() -> Path:
    if not (IXI_DIR / "demographics.csv").exists():
        pytest.fail(f"the IXI test data is missing: expected {IXI_DIR} (set NDAE_IXI_DIR)")
    return IXI_DIR


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    # CI has 2 cores; tests run in one process, so one intra-op thread keeps timings stable.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield
