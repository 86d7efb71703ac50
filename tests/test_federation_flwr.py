"""End to end through Flower itself: `flwr run` on a simulation-mode SuperLink (Ray engine)."""

from __future__ import annotations

import json
import os

import pytest

from ndae.federation.config import FederationConfig
from ndae.federation.simulation import run_simulation
from ndae.testing.synthetic_cohort import make_synthetic_cohort


def _processes_named(fragment: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if fragment.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_flwr_run_simulation_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("NDAE_TEST_HOOKS", "1")  # the fault hook below; the SuperLink and its apps inherit it
    make_synthetic_cohort(tmp_path / "cohort", sites=2, controls_per_site=4, patients_per_site=6, seed=2)
    run_dir = tmp_path / "run"
    config = FederationConfig(run_dir=str(run_dir), cohort_dir=str(tmp_path / "cohort"), cache_dir=str(tmp_path / "cache"),
                              rounds=1, batch_size=4, survival_mode="federated", fault_site="site2",
                              fault_phase="risk_summary", min_sites=1,
                              # 12 patients: cosine and mahalanobis together order the events perfectly
                              survival_features="mahalanobis")
    status = run_simulation(config.to_run_config(), num_sites=2, timeout=540)
    assert status["status"] == "completed"
    report = (run_dir / "report.md").read_text()
    assert "| site1 |" in report and "| site2 |" in report
    assert "| risk_summary |  | site2 | error:" in report  # a ClientApp that raised is named, the run went on
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds[0]["phase"] == "dae" and rounds[0]["sites"] == ["site1", "site2"]
    # the voxel-wise baseline's query reached Flower's ClientApp at both sites (its handler is registered)
    voxelwise = next(r for r in rounds if r["phase"] == "voxelwise")
    assert voxelwise["sites"] == ["site1", "site2"] and voxelwise["n_controls"] == 8
    prior = next(r for r in rounds if r["phase"] == "prior_residuals")  # and the prior residuals' query
    assert prior["sites"] == ["site1", "site2"] and prior["n_controls"] == 8
    assert (run_dir / "dae" / "checkpoint.pt").exists() and (run_dir / "survival" / "cox.json").exists()
    # Everything the SuperLink started is gone (it ran under this test's private FLWR_HOME).
    assert not _processes_named(str(tmp_path)) or all(
        "pytest" in open(f"/proc/{p}/cmdline").read() for p in _processes_named(str(tmp_path)))
