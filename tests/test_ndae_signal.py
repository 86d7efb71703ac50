"""The chain carries the disease: on the toy strong-effect cohort, the NDAE
Mahalanobis score correlates with the true severity, and the same chain with the patients'
latents shuffled among them does not.

The threshold comes from the chain's measured distribution over five cohort/DAE seeds
(`python -m benchmarks.bench_signal`, kept in benchmarks/results/signal.json): mean − 2 sd, which
every measured seed clears. A chain whose scores are unrelated to the anatomy gives ρ ~ N(0, 1/√47)
≈ 0 ± 0.15, so it falls below the threshold (and the shuffled control shows what that looks like).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_signal import COHORT
from ndae.testing.signal_check import ndae_signal
from ndae.testing.toy_cohort import write_toy_cohort

MEASURED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "signal.json"


@pytest.fixture(scope="module")
def measured():
    results = json.loads(MEASURED.read_text())
    rho = np.array([run["rho"]["mahalanobis"] for run in results["runs"]])
    return results, float(rho.mean() - 2 * rho.std(ddof=1))


@pytest.mark.slow
def test_ndae_mahalanobis_finds_severity_and_shuffled_latents_do_not(measured, tmp_path):
    results, threshold = measured
    chance_sd = 1 / np.sqrt(COHORT["n_patients"] - 1)
    assert threshold > 1.5 * chance_sd  # the threshold itself must be out of chance's reach
    manifest, truth = write_toy_cohort(tmp_path / "toy", seed=0, **COHORT)
    result = ndae_signal(manifest, truth, tmp_path / "chain", steps=results["steps"], seed=0)
    assert result["patients"] == COHORT["n_patients"]
    assert result["rho"]["mahalanobis"] > threshold, result
    assert abs(result["rho_shuffled"]["mahalanobis"]) < 2.5 * chance_sd, result
