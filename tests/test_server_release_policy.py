"""The server's release policy (`ndae/federation/server/release_policy.py`): what a private run
changes at the server is decided in one place, which every phase and the report ask; no server
module tests the privacy flag itself."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ndae.federation.config import FederationConfig

SERVER = Path(__file__).resolve().parents[1] / "ndae" / "federation" / "server"
# `config.privacy`, `self.config.privacy`, `getattr(config, "privacy", ...)`: the flag read directly
FLAG = re.compile(r"config\s*\)?\s*\.\s*privacy\b|getattr\(\s*[\w.]*config\s*,\s*[\"']privacy[\"']")


def test_no_server_module_but_the_release_policy_tests_the_privacy_flag():
    readers = sorted(f"{path.name}:{n}" for path in SERVER.glob("*.py") if path.name != "release_policy.py"
                     for n, line in enumerate(path.read_text().splitlines(), 1) if FLAG.search(line))
    assert readers == [], f"ask the run's ReleasePolicy instead of the privacy flag: {readers}"
    assert FLAG.search((SERVER / "release_policy.py").read_text()), "the pattern no longer finds the flag"


def test_a_private_run_does_without_every_non_private_extra_and_says_why():
    from ndae.federation.server.release_policy import NON_PRIVATE_EXTRAS, ReleasePolicy

    open_run, private = ReleasePolicy(FederationConfig()), ReleasePolicy(FederationConfig(privacy=True))
    for extra in NON_PRIVATE_EXTRAS:
        assert open_run.asks(extra) and open_run.withheld(extra) == ""
        assert not private.asks(extra) and private.withheld(extra).startswith("a private run: ")
    with pytest.raises(KeyError):  # an extra the table does not name is an error, not a silent "asked"
        open_run.asks("per-subject-ages")
    assert (open_run.noisy_count, private.noisy_count) == ("", " (noisy DP count)")
    assert (open_run.on_off, private.on_off) == ("off", "on")
    assert (open_run.summary({"site1": {}}), private.summary({"site1": {}})) == ({}, {"privacy": {"site1": {}}})
    assert open_run.km_withheld_lines({}) == [] and private.km_withheld_lines({"cox_refused": "monotone"}) == []
    assert "private sites keep them" in private.km_withheld_lines({})[-1]


def _site_stats(seed: int, site: str):
    from ndae.normative import DesignSpec, SufficientStats

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"subject": [f"{site}-{i}" for i in range(12)], "site": site,
                          "age": rng.uniform(20, 80, 12), "sex": rng.choice(["F", "M"], 12)})
    stats = SufficientStats.from_data(frame, rng.normal(0, 1, (12, 3)), DesignSpec(), site_column="site")
    return replace(stats, dp_noise_variance=np.full(3, 0.5))  # as a private site's noised release declares it


@pytest.mark.parametrize("query", ["normative_stats", "prior_residual_stats"])
def test_only_a_private_runs_noised_sums_are_post_processed_into_a_fit_input(query):
    from ndae.federation.server.release_policy import NOISED_SUMS, ReleasePolicy
    from ndae.privacy.moments_postprocessing import moments_noise_warnings, postprocess_noisy_stats

    per_site = {s: _site_stats(k, s) for k, s in enumerate(("site1", "site2"))}
    # site2 declares noise that swamps its sums: the private fit input comes with its warning
    per_site["site2"] = replace(per_site["site2"], dp_noise_variance=np.full(3, 1e6))
    stats = sum(per_site[s] for s in sorted(per_site))
    arrays = {s: p.to_arrays() for s, p in per_site.items()}
    unchanged, warnings = ReleasePolicy(FederationConfig()).fit_input(query, stats, arrays)
    assert unchanged is stats and warnings == []
    silent = FederationConfig(privacy=True, **{NOISED_SUMS[query]: 0.0})  # no noise: nothing to project
    assert ReleasePolicy(silent).fit_input(query, stats, arrays)[0] is stats
    projected, warnings = ReleasePolicy(FederationConfig(privacy=True)).fit_input(query, stats, arrays)
    expected = postprocess_noisy_stats(stats).to_arrays()
    assert projected.to_arrays().keys() == expected.keys()
    assert all(np.array_equal(projected.to_arrays()[k], expected[k]) for k in expected)
    assert warnings == moments_noise_warnings(arrays)
    assert len(warnings) == 1 and "'site2'" in warnings[0], warnings


def test_a_phase_asks_the_runs_release_policy_not_the_flag(tmp_path):
    """A non-private config whose policy withholds the voxel-wise baseline: the phase asks no site
    and reports the policy's reason."""
    from ndae.federation.server.phase_context import PhaseContext
    from ndae.federation.server.release_policy import VOXELWISE_BASELINE, ReleasePolicy
    from ndae.federation.server.run_files import RunFiles
    from ndae.federation.server.voxelwise_phase import fit_voxelwise

    class Withholding(ReleasePolicy):
        def withheld(self, extra):
            return "this consortium's rule" if extra == VOXELWISE_BASELINE else super().withheld(extra)

    def no_query(*args, **kwargs):
        raise AssertionError("no site may be asked")

    config = FederationConfig(run_dir=str(tmp_path), voxelwise_baseline=True)
    context = PhaseContext(config=config, dae_config=SimpleNamespace(to_dict=dict), files=RunFiles(tmp_path),
                           messenger=SimpleNamespace(query=no_query), log=lambda line: None,
                           releases=Withholding(config))
    assert fit_voxelwise(context) == (None, {"not_computed": "this consortium's rule"})
    assert PhaseContext(config=config, dae_config=None, files=RunFiles(tmp_path), messenger=None,
                        log=print).releases.private is False  # built from the config when not given
