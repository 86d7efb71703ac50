"""The server's later phases take a `PhaseContext` and the fitted models they need as arguments,
never the `Federation`: each runs on its own, here with a messenger no site may be asked through."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ndae.federation.config import FederationConfig
from ndae.federation.server.phase_context import PhaseContext
from ndae.federation.server.run_files import RunFiles
from ndae.federation.server.survival_phase import CoxFit
from ndae.federation.server.voxelwise_phase import compare_with_voxelwise, fit_voxelwise


def _no_query(*args, **kwargs):
    raise AssertionError("no site may be asked")


def _context(tmp_path, lines: list[str], **settings) -> PhaseContext:
    return PhaseContext(config=FederationConfig(run_dir=str(tmp_path), **settings),
                        dae_config=SimpleNamespace(to_dict=dict), messenger=SimpleNamespace(query=_no_query),
                        files=RunFiles(tmp_path), log=lines.append)


def test_the_context_names_the_run_folder_of_its_files(tmp_path):
    assert _context(tmp_path, []).run_dir == tmp_path


def test_a_private_run_asks_no_site_for_voxelwise_statistics(tmp_path):
    baseline, info = fit_voxelwise(_context(tmp_path, [], privacy=True, voxelwise_baseline=True))
    assert baseline is None and "private run" in info["not_computed"]


def _ndae_fit(events_per_site: int) -> CoxFit:
    counts = {site: {"patients": 6, "events": events_per_site} for site in ("site1", "site2")}
    return CoxFit(beta=np.zeros(3), covariates=["cosine", "age", "sex_female"],
                  reference=(np.zeros(2), ["age", "sex_female"]), table=None, sites=["site1", "site2"],
                  counts=counts)


BASELINE = SimpleNamespace(summaries={"precentral": None, "whole_brain": None})


@pytest.mark.parametrize("failures, expected", [
    ({"site2": "no atlas"}, "site2: no atlas"),  # a site in the fit could not score its patients
    ({"site3": "no atlas"}, "6 events for 3 covariates"),  # site3 is not in the fit: only the events count
])
def test_the_voxelwise_comparison_works_from_the_ndae_fit_alone(tmp_path, failures, expected):
    lines: list[str] = []
    result = compare_with_voxelwise(_context(tmp_path, lines, voxelwise_regions="precentral"), BASELINE,
                                    _ndae_fit(events_per_site=3), failures)
    assert result["covariates"] == ["age", "sex_female", "z_voxel_precentral"]
    assert expected in result["not_computed"]
