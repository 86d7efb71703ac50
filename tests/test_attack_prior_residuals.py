"""Adversarial pass on the prior residual step (docs/privacy.md, threat model): the server and the
researcher attack the real site handlers with crafted `prior_residual_stats` and `deviations`
messages and run configs.

One small site (7 controls, 6 patients), an untrained DAE and random normative models: what is
attacked is the handlers' checks, not the quality of the models, so nothing is trained here.
"""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from ndae.federation.config import FederationConfig
from ndae.federation.inprocess import InProcessGrid
from ndae.federation.records import PRIOR_KEY, normative_to_config, record_to_arrays, record_to_frame
from ndae.federation.site.privacy import PRIOR_RESIDUAL_STATISTIC
from ndae.normative import DesignSpec, NormativeModel
from ndae.privacy.ledger import read_ledger

POLICY = {"budget-epsilon": 50.0, "max-epsilon-per-run": 50.0}
SUBJECT_ID = re.compile(r"S1\d{3}")  # the synthetic cohort's subject ids


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The cohort, the site's data, an untrained DAE and random normative models of the right sizes."""
    from ndae.federation.site.prior_residuals import prior_region_means
    from ndae.testing.site_world import untrained_site

    root = tmp_path_factory.mktemp("attack-prior")
    world = untrained_site(root, _config(root), controls=7, patients=6, seed=5)
    site, frame, rng = world["site"], world["frame"], world["rng"]
    columns = prior_region_means(site, world["weights"], world["dae"], world["z_sem"], site.controls, "cpu").columns
    controls = frame[site.controls].reset_index(drop=True)
    residual = NormativeModel().fit(controls, rng.normal(size=(len(controls), len(columns))) * 0.1,
                                    feature_names=columns)
    return {**world, "residual": residual, "columns": columns}


def _config(root, **overrides):
    settings = dict(run_dir=str(root / "run"), rounds=1, batch_size=4, seed=3, privacy=True,
                    cache_dir=str(root / "cache"), survival_mode="federated")
    settings.update(overrides)
    return FederationConfig(**settings)


def _grid(world, tmp_path, node_config=None, **overrides):
    config = _config(world["root"], **overrides)
    node = {**POLICY, "privacy-dir": str(tmp_path / "ledger")} if node_config is None else node_config
    grid = InProcessGrid([world["manifest"]], config.to_run_config(), node_config=node)
    return grid, next(iter(grid.contexts))


def _ask(grid, node, message_type, content):
    (reply,) = grid.send_and_receive([Message(content, dst_node_id=node, message_type=message_type)])
    return reply


def _stats_query(world, design=None, normative=None, **extra):
    return RecordDict({"dae": world["weights"], "normative": normative_to_config(normative or world["z_sem"]),
                       "config": ConfigRecord({"dae-config": json.dumps(world["dae"]),
                                               "design": json.dumps(design or DesignSpec().to_dict()), **extra})})


def _deviations_query(world, residual=None, features=("cosine", "z_prior_frontal"), share_rows=False,
                      normative=None):
    content = RecordDict({"dae": world["weights"], "normative": normative_to_config(normative or world["z_sem"]),
                          "config": ConfigRecord({"dae-config": json.dumps(world["dae"]), "features": list(features),
                                                  "share-rows": share_rows})})
    if residual is not False:
        content[PRIOR_KEY] = normative_to_config(residual or world["residual"])
    return content


def _ledger(tmp_path):
    path = tmp_path / "ledger" / "site1.jsonl"
    return read_ledger(path) if path.exists() else []


def _reason(reply) -> str:
    assert reply.has_error(), "the site answered"
    return reply.error.reason


def _leaks_nothing(reason: str, world) -> None:
    """No subject id and no count of the site's controls (7) or patients (6) in an error's text."""
    assert not SUBJECT_ID.search(reason), reason
    assert not re.search(r"\((6|7),", reason), reason  # shapes such as (7, 3) or (6,16)


# ---- the design and the models the server sends ----------------------------------------------
@pytest.mark.parametrize("column", ["age_column", "sex_column"])
def test_a_design_on_the_subject_column_is_refused_without_naming_a_subject(world, tmp_path, column):
    """DesignSpec.build names the offending rows by subject id (and counts them): a design the
    server points at the `subject` column must be refused before any row is read."""
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.prior_residual_stats",
                          _stats_query(world, design={**DesignSpec().to_dict(), column: "subject"})))
    _leaks_nothing(reason, world)
    assert "design" in reason.splitlines()[0]
    assert not _ledger(tmp_path)


def test_a_zsem_model_whose_design_reads_the_subject_column_is_refused_without_naming_a_subject(world, tmp_path):
    hostile = copy.deepcopy(world["z_sem"])
    hostile.design = DesignSpec(age_column="subject")
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.prior_residual_stats", _stats_query(world, normative=hostile)))
    _leaks_nothing(reason, world)
    assert not _ledger(tmp_path)


def test_a_zsem_model_of_the_wrong_size_is_refused_without_the_number_of_controls(world, tmp_path):
    small = NormativeModel().fit(world["frame"], np.random.default_rng(1).normal(size=(len(world["frame"]), 3)))
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.prior_residual_stats", _stats_query(world, normative=small)))
    _leaks_nothing(reason, world)
    assert "normative" in reason.splitlines()[0]
    assert not _ledger(tmp_path)


def _overflowing_for_women(model: NormativeModel, scale: float = 1e38) -> NormativeModel:
    """A z_sem model predicting 0 for men and `scale` for women: the DAE's float32 forward pass
    turns the women's residuals into NaN, the men's stay finite."""
    hostile = copy.deepcopy(model)
    p, d = hostile.design.n_columns, len(hostile.feature_names)
    hostile.beta = np.zeros((d, p))
    hostile.beta[:, -1] = 1.0  # sex_female
    hostile.control_mean = np.zeros(d)
    hostile.control_sd = np.full(d, scale)
    hostile.site_offset = np.zeros_like(hostile.site_offset)
    return hostile


def test_a_crafted_zsem_model_cannot_make_the_release_reveal_whether_a_woman_is_among_the_controls(world, tmp_path):
    """NaN is not bounded by clipping: if one control's residuals are NaN the whole noised sum is
    NaN, so a model that is NaN for one subgroup asks 'is anyone of it at this site?' outside DP.
    Every control's contribution must stay bounded whatever the server sends."""
    from ndae.federation.site.prior_residuals import prior_region_means

    site = world["site"]
    hostile = _overflowing_for_women(world["z_sem"])
    means = prior_region_means(site, world["weights"], world["dae"], hostile, site.controls, "cpu")
    assert np.isfinite(means.values).all()  # each control's row is a bounded function of its own data
    grid, node = _grid(world, tmp_path)
    reply = _ask(grid, node, "query.prior_residual_stats", _stats_query(world, normative=hostile))
    if not reply.has_error():  # refusing the model outright is fine too
        stats = record_to_arrays(reply.content["stats"])
        assert all(np.isfinite(stats[k]).all() for k in ("xtx", "xty", "sum_y2"))


# ---- the run config's noise and clip -----------------------------------------------------------
@pytest.mark.parametrize("overrides, key", [
    ({"prior_residual_noise_multiplier": float("inf")}, "prior-residual-noise-multiplier"),
    ({"prior_residual_clip": 1e100}, "prior-residual-clip"),
    ({"prior_residual_clip": float("inf")}, "prior-residual-clip"),
    ({"prior_residual_clip": 1e-200}, "prior-residual-clip"),
], ids=["noise-inf", "clip-huge", "clip-inf", "clip-underflows"])
def test_a_noise_or_clip_the_ledger_cannot_record_is_refused_clearly_before_any_data_is_read(world, tmp_path,
                                                                                              overrides, key):
    """Infinite or overflowing parameters used to fail deep in the ledger writer ('Out of range
    float values are not JSON compliant') after the residuals were computed; a clip whose block
    sensitivity C_y² underflows to 0 gets noise sd 0 on that block (an exact release of it)."""
    # A hostile server sends the values as run config (its own FederationConfig refuses non-finite ones).
    config = {**_config(world["root"]).to_run_config(), **{k.replace("_", "-"): v for k, v in overrides.items()}}
    grid = InProcessGrid([world["manifest"]], config, node_config={**POLICY, "privacy-dir": str(tmp_path / "ledger")})
    node = next(iter(grid.contexts))
    reason = _reason(_ask(grid, node, "query.prior_residual_stats", _stats_query(world)))
    assert key in reason.splitlines()[0], reason
    assert not _ledger(tmp_path)


@pytest.mark.parametrize("overrides", [{"prior_residual_noise_multiplier": float("nan")},
                                       {"prior_residual_noise_multiplier": -1.0},
                                       {"prior_residual_clip": 0.0}], ids=["nan", "negative", "clip-0"])
def test_a_nan_or_negative_noise_or_a_zero_clip_is_refused_by_the_run_config_itself(world, overrides):
    from ndae.errors import NdaeError

    with pytest.raises(NdaeError, match="prior-residual"):
        _config(world["root"], **overrides)


@pytest.mark.parametrize("extra", [{"noise-multiplier": 0.0}, {"prior-residual-noise-multiplier": 0.0},
                                   {"prior-residual-clip": 1e6}])
def test_the_message_cannot_set_the_noise_or_the_clip(world, tmp_path, extra):
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.prior_residual_stats", _stats_query(world, **extra)))
    assert "PolicyViolation" in reason and not _ledger(tmp_path)


def test_a_query_without_the_zsem_model_is_refused_naming_it_and_accounts_nothing(world, tmp_path):
    content = _stats_query(world)
    del content["normative"]
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.prior_residual_stats", content))
    assert "normative" in reason.splitlines()[0] and not reason.startswith("KeyError")
    assert not _ledger(tmp_path)


# ---- repeated queries, the noise's source, the ledger ------------------------------------------
def test_asking_again_is_a_new_accounted_release_and_the_per_run_cap_stops_it(world, tmp_path):
    from ndae.privacy.accountant import epsilon_of

    config = _config(world["root"])
    one = epsilon_of([(config.prior_residual_noise_multiplier, 1.0, 1)], 1e-5)
    two = epsilon_of([(config.prior_residual_noise_multiplier, 1.0, 1)] * 2, 1e-5)
    cap = (two + epsilon_of([(config.prior_residual_noise_multiplier, 1.0, 1)] * 3, 1e-5)) / 2
    grid, node = _grid(world, tmp_path, node_config={"budget-epsilon": 50.0, "max-epsilon-per-run": cap,
                                                     "privacy-dir": str(tmp_path / "ledger")})
    replies = [_ask(grid, node, "query.prior_residual_stats", _stats_query(world)) for _ in range(3)]
    assert not replies[0].has_error() and not replies[1].has_error()
    assert "PrivacyBudgetExceeded" in _reason(replies[2])
    entries = _ledger(tmp_path)
    assert [e["details"]["statistic"] for e in entries] == [PRIOR_RESIDUAL_STATISTIC] * 2  # the refusal wrote nothing
    for reply, entry in zip(replies[:2], entries):  # written before the reply left, and the reply says so
        assert int(reply.content["privacy"]["ledger-entries"]) == entries.index(entry) + 1
    assert entries[0]["epsilon_spent_so_far"] == pytest.approx(one, rel=1e-6)
    assert entries[1]["epsilon_spent_so_far"] == pytest.approx(two, rel=1e-6)
    first, second = (record_to_arrays(r.content["stats"])["xty"] for r in replies[:2])
    assert not np.allclose(first, second)  # fresh noise: the average is what two accounted releases allow


def test_the_noise_is_the_sites_own_not_the_global_generators(world, tmp_path):
    """Two identical queries with the global numpy and torch generators reset to the same state
    give different releases: the noise is drawn from the site's CSPRNG-seeded generator."""
    grid, node = _grid(world, tmp_path)
    releases = []
    for _ in range(2):
        np.random.seed(0)
        torch.manual_seed(0)
        releases.append(record_to_arrays(_ask(grid, node, "query.prior_residual_stats",
                                              _stats_query(world)).content["stats"]))
    assert not np.allclose(releases[0]["xty"], releases[1]["xty"])
    assert all("insecure_reproducible_seed" not in e["details"] for e in _ledger(tmp_path))


# ---- the patients' z-scores --------------------------------------------------------------------
def test_the_patients_prior_z_scores_never_leave_a_private_site(world, tmp_path):
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.deviations", _deviations_query(world, share_rows=True)))
    assert "PolicyViolation" in reason and "refuses to share patients' deviation scores" in reason
    reply = _ask(grid, node, "query.deviations", _deviations_query(world))
    assert not reply.has_error() and set(reply.content.keys()) == {"privacy"}  # no rows, no swap test, no counts
    assert not [e for e in _ledger(tmp_path) if e["mechanism"] == "shared-scores"]


def test_a_residual_model_whose_design_reads_the_subject_column_names_no_patient(world, tmp_path):
    hostile = copy.deepcopy(world["residual"])
    hostile.design = DesignSpec(age_column="subject")
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.deviations", _deviations_query(world, residual=hostile)))
    _leaks_nothing(reason, world)


@pytest.mark.parametrize("damage", ["beta-rows", "noise-variance", "nan-mean", "zero-variance"])
def test_a_malformed_residual_model_is_refused_clearly_without_the_number_of_patients(world, tmp_path, damage):
    hostile = copy.deepcopy(world["residual"])
    if damage == "beta-rows":
        hostile.beta = hostile.beta[:3]
    elif damage == "noise-variance":
        hostile.noise_variance = hostile.noise_variance[:3]
    elif damage == "nan-mean":
        hostile.control_mean = np.full_like(hostile.control_mean, np.nan)
    else:
        hostile.noise_variance = np.zeros_like(hostile.noise_variance)
        hostile.site_variance = np.zeros_like(hostile.site_variance)
        hostile.site_offset_variance = np.zeros_like(hostile.site_offset_variance)
        hostile.beta_precision = hostile.beta_precision * 1e300
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.deviations", _deviations_query(world, residual=hostile)))
    _leaks_nothing(reason, world)
    assert "prior residual model" in reason.splitlines()[0], reason


def test_a_residual_model_naming_subject_or_an_id_among_its_regions_is_refused(world, tmp_path):
    hostile = copy.deepcopy(world["residual"])
    hostile.feature_names = ["subject", *world["columns"][1:]]
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.deviations", _deviations_query(world, residual=hostile)))
    assert "are not this site's" in reason.splitlines()[0]


def test_hostile_prior_feature_names_are_refused_by_the_server_and_by_the_site(world, tmp_path):
    from ndae.federation.server.errors import FederationError
    from ndae.federation.server.prior_residual_phase import survival_features

    prior = {"regions": world["columns"]}
    for name in ("z_prior_../../etc/passwd", "z_prior_" + "x" * 5000, "z_prior_subject"):
        with pytest.raises(FederationError, match="is not a prior residual region"):
            survival_features(["cosine", name], prior)
    grid, node = _grid(world, tmp_path)  # a server naming it anyway: the site's table has no such column
    reason = _reason(_ask(grid, node, "query.deviations",
                          _deviations_query(world, features=("cosine", "z_prior_../../etc/passwd"))))
    assert "are not deviation scores" in reason.splitlines()[0]


def test_the_swap_test_stays_at_a_private_site(world, tmp_path):
    from ndae.federation.site.context import PRIOR_SWAP_KEY

    grid, node = _grid(world, tmp_path)
    assert not _ask(grid, node, "query.prior_residual_stats", _stats_query(world)).has_error()
    assert PRIOR_SWAP_KEY not in grid.contexts[node].state
    reply = _ask(grid, node, "query.deviations", _deviations_query(world))
    assert "prior-swap" not in reply.content


@pytest.mark.parametrize("private", [True, False])
def test_a_damaged_prepared_cache_is_the_sites_own_error_not_a_refusal_of_the_query(world, tmp_path, private):
    """A site's slices load on the first message that reads them: when that is a deviations query
    with the prior residual model, a damaged cache is still reported as the site's (its log in a
    private run; the file and what to do otherwise), not as the server's DAE config."""
    from ndae.federation.site.data import _SITE_CACHE

    damaged = sorted(world["site"].prepared_dir.glob("*.npz"))[0]
    original = damaged.read_bytes()
    try:
        damaged.write_bytes(b"not a zip archive")
        _SITE_CACHE.clear()
        grid, node = _grid(world, tmp_path, node_config=None if private else {}, privacy=private)
        reason = _reason(_ask(grid, node, "query.deviations", _deviations_query(world)))
    finally:
        damaged.write_bytes(original)
        _SITE_CACHE.clear()
    assert "DAE config" not in reason, reason
    if private:
        assert "could not answer query.deviations (NdaeError)" in reason and "site's log" in reason, reason
        _leaks_nothing(reason, world)
    else:
        assert "unreadable" in reason and "prepare again" in reason, reason


# ---- a non-private run: the old scores are unchanged --------------------------------------------
def test_a_non_private_runs_cosine_and_mahalanobis_are_unchanged_by_the_prior_features(world, tmp_path):
    grid, node = _grid(world, tmp_path, node_config={}, privacy=False)
    features = ("cosine", "mahalanobis")
    without = _ask(grid, node, "query.deviations", _deviations_query(world, residual=False, features=features))
    with_prior = _ask(grid, node, "query.deviations", _deviations_query(world, features=features))
    table = record_to_frame(grid.contexts[node].state["survival-table"])
    assert [c for c in table.columns if c.startswith("z_prior_")] == ["z_" + c for c in world["columns"]]
    a, b = (record_to_arrays(r.content["moments"]) for r in (without, with_prior))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert set(with_prior.content.keys()) == {"counts", "moments", "prior-swap"}


# ---- the same attacks on the z_sem moments and the deviations query -----------------------------
def test_the_zsem_moments_query_with_a_design_on_the_subject_column_names_no_subject(world, tmp_path):
    grid, node = _grid(world, tmp_path)
    content = _stats_query(world, design={**DesignSpec().to_dict(), "age_column": "subject"})
    del content["normative"]
    reason = _reason(_ask(grid, node, "query.normative_stats", content))
    _leaks_nothing(reason, world)


def test_a_deviations_query_whose_zsem_model_reads_the_subject_column_names_no_patient(world, tmp_path):
    hostile = copy.deepcopy(world["z_sem"])
    hostile.design = DesignSpec(age_column="subject")
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.deviations",
                          _deviations_query(world, residual=False, features=("cosine",), normative=hostile)))
    _leaks_nothing(reason, world)


def test_the_gaussian_moments_bound_a_non_finite_record():
    from ndae.privacy.dp_moments import private_moments

    X = np.column_stack([np.ones(5), np.linspace(0, 1, 5)])
    Y = np.ones((5, 2))
    Y[3] = np.nan
    noisy = private_moments(X, Y, covariate_clip=2.0, latent_clip=1.0, noise_multiplier=1.0,
                            rng=np.random.default_rng(0), public={})
    assert np.isfinite(noisy.stats["xty"]).all()


def test_a_site_without_subjects_of_a_group_gets_the_region_columns_and_no_row(world):
    """A site with no patients (or no controls) used to fail in the empty branch (region_means
    cannot reshape zero rows), failing the whole deviations query of that site."""
    from ndae.federation.site.prior_residuals import prior_region_columns, prior_region_means

    site = world["site"]
    nobody = np.zeros(len(site.data.subjects), bool)
    means = prior_region_means(site, world["weights"], world["dae"], world["z_sem"], nobody, "cpu")
    assert means.columns == world["columns"] == prior_region_columns(site, world["dae"]) and means.subjects == 0
    assert len(means.table) == 0 and list(means.table.columns) == ["subject", *world["columns"]]


# ---- the server against a hostile site's reply ------------------------------------------------
@pytest.mark.parametrize("reply", ["stats-not-arrays", "no-stats", "no-columns"])
def test_a_garbled_site_reply_leaves_the_run_without_the_prior_features_instead_of_failing_it(tmp_path, monkeypatch,
                                                                                              reply):
    """The phase's promise: a site that does not send usable statistics costs the run the prior
    features (the report says why), not the run (a ConfigRecord in place of the arrays used to
    raise AttributeError out of the server)."""
    from types import SimpleNamespace

    from flwr.app import ArrayRecord

    import ndae.federation.server.prior_residual_phase as phase
    from ndae.federation.server.messaging import PhaseResult
    from ndae.federation.server.phase_context import PhaseContext
    from ndae.federation.server.run_files import RunFiles

    content = {"stats-not-arrays": RecordDict({"stats": ConfigRecord({"xtx": 1}),
                                               "columns": ConfigRecord({"columns": ["prior_frontal"]})}),
               "no-stats": RecordDict({"columns": ConfigRecord({"columns": ["prior_frontal"]})}),
               "no-columns": RecordDict({"stats": ArrayRecord()})}[reply]
    monkeypatch.setattr(phase, "ema_weights_record", lambda ema: ArrayRecord())
    monkeypatch.setattr(phase, "normative_to_config", lambda model: ConfigRecord())
    context = PhaseContext(config=FederationConfig(run_dir=str(tmp_path), privacy=True),
                           dae_config=SimpleNamespace(to_dict=dict), files=RunFiles(tmp_path), log=lambda line: None,
                           messenger=SimpleNamespace(query=lambda *a, **k: PhaseResult({"site1": content}, {})))
    model, info = phase.fit_prior_residuals(context, None, None, ["site1"])
    assert model is None and info["not_computed"]
