"""A hostile server against the real site handlers (docs/privacy.md, threat model): what it may
name as a survival feature or Cox covariate, how many Cox queries it gets (refused ones included,
over the site's lifetime), how much a run may train and spend beyond what it declared, and what
an error reply may say.

One small site (7 controls, 6 patients), an untrained DAE and a random normative model: what is
attacked is the handlers' checks, not the quality of the models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from ndae.federation.config import FederationConfig
from ndae.federation.inprocess import InProcessGrid
from ndae.federation.records import normative_to_config
from ndae.federation.site.context import FEATURES_KEY, STATE_KEY
from ndae.normative import DesignSpec
from ndae.privacy.ledger import read_ledger

POLICY = {"budget-epsilon": 50.0, "max-epsilon-per-run": 50.0}
SUBJECT_ID = re.compile(r"S1\d{3}")  # the synthetic cohort's subject ids
CONTROLS, PATIENTS = 7, 6
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from ndae.testing.site_world import untrained_site

    root = tmp_path_factory.mktemp("attack-site")
    return untrained_site(root, _config(root), controls=CONTROLS, patients=PATIENTS, seed=5)


def _config(root, **overrides):
    settings = dict(run_dir=str(root / "run"), rounds=1, batch_size=4, seed=3, privacy=True,
                    cache_dir=str(root / "cache"), survival_mode="federated")
    settings.update(overrides)
    return FederationConfig(**settings)


def _grid(world, tmp_path, node_config=None, manifest=None, **overrides):
    config = _config(world["root"], **overrides)
    node = {**POLICY, "privacy-dir": str(tmp_path / "ledger"), **(node_config or {})}
    grid = InProcessGrid([manifest or world["manifest"]], config.to_run_config(), node_config=node)
    return grid, next(iter(grid.contexts))


def _ask(grid, node, message_type, content):
    (reply,) = grid.send_and_receive([Message(content, dst_node_id=node, message_type=message_type)])
    return reply


def _reason(reply) -> str:
    assert reply.has_error(), "the site answered"
    return reply.error.reason


def _leaks_nothing(reason: str, *paths) -> None:
    """No subject id, no count of the site's controls or patients, no path of the site's in an error."""
    assert not SUBJECT_ID.search(reason), reason
    assert not re.search(rf"(?<![\d.e-])({CONTROLS}|{PATIENTS}|{CONTROLS + PATIENTS})(?![\d.])", reason), reason
    for path in paths:
        assert str(path) not in reason, reason


def _deviations(world, features=("cosine", "mahalanobis")):
    return RecordDict({"dae": world["weights"], "normative": normative_to_config(world["z_sem"]),
                       "config": ConfigRecord({"dae-config": json.dumps(world["dae"]), "features": list(features),
                                               "share-rows": False})})


def _cox(beta, covariates, reference=None):
    from ndae.federation.server.newton import beta_message

    return beta_message(np.asarray(beta, float), list(covariates), reference)


def _ledger(tmp_path):
    path = tmp_path / "ledger" / "site1.jsonl"
    return read_ledger(path) if path.exists() else []


def _cox_entries(tmp_path):
    return [e for e in _ledger(tmp_path) if e["mechanism"] in ("cox-terms", "risk-summary")]


# ---- what may be a survival feature or a Cox covariate ------------------------------------------
@pytest.mark.parametrize("column", ["subject", "time", "event", "site", "age", "sex_female"])
def test_a_deviations_query_naming_a_column_that_is_not_a_score_is_refused_before_any_patient_is_read(
        world, tmp_path, column):
    """The deviation table holds the subject id, follow-up and covariates beside the scores: a
    feature the server names must be one of the scores the site's own code computes."""
    grid, node = _grid(world, tmp_path)
    reason = _reason(_ask(grid, node, "query.deviations", _deviations(world, ("cosine", column))))
    _leaks_nothing(reason, world["manifest"])
    assert "are not deviation scores" in reason.splitlines()[0], reason
    assert STATE_KEY not in grid.contexts[node].state and FEATURES_KEY not in grid.contexts[node].state


@pytest.mark.parametrize("kind", ["query.cox_terms", "query.risk_summary"])
def test_a_cox_query_on_the_subject_column_names_no_subject_and_is_not_answered(world, tmp_path, kind):
    """The attack: name `subject` in the deviations phase, then ask for the Cox terms of it."""
    grid, node = _grid(world, tmp_path)
    _ask(grid, node, "query.deviations", _deviations(world, ("cosine", "subject")))  # refused, or not
    reason = _reason(_ask(grid, node, kind, _cox([1e-3], ["subject"])))
    _leaks_nothing(reason, world["manifest"])
    assert not [e for e in _cox_entries(tmp_path) if "refused" not in e["details"]]  # nothing was computed


def test_the_covariates_a_cox_query_may_name_are_the_runs_scores_and_the_declared_covariates(world, tmp_path):
    grid, node = _grid(world, tmp_path)
    assert not _ask(grid, node, "query.deviations", _deviations(world)).has_error()
    assert not _ask(grid, node, "query.cox_terms", _cox([0.1, 0.0, 0.0], ["cosine", "age", "sex_female"])).has_error()
    for covariates in (["cosine_centred"], ["time"], ["subject"], ["site"]):  # not asked for in this run, or no score
        reason = _reason(_ask(grid, node, "query.cox_terms", _cox([0.1], covariates)))
        assert "covariates must be distinct names among" in reason and "subject" not in reason.split("got")[0]


def test_an_error_the_sites_rows_raise_reaches_the_server_without_ids_counts_or_paths(world, tmp_path):
    """A patient without follow-up: the site's own error names the manifest and the patients;
    the server reads only what kind of error it was."""
    import pandas as pd

    rows = pd.read_csv(world["manifest"], dtype=str, keep_default_na=False)
    patient = rows.index[rows["group"] != "control"][0]
    rows.loc[patient, "time"] = ""
    broken = world["manifest"].with_name("manifest-no-time.csv")
    rows.to_csv(broken, index=False)
    grid, node = _grid(world, tmp_path, manifest=broken)
    reason = _reason(_ask(grid, node, "query.deviations", _deviations(world)))
    _leaks_nothing(reason, broken, broken.parent)
    assert "site's log" in reason, reason


# ---- every Cox query is counted and recorded, over the site's lifetime --------------------------
def test_a_cox_query_refused_for_its_beta_is_counted_and_recorded_before_the_refusal_leaves(world, tmp_path):
    """Refusals for |beta x sd| are answers too (they bound each covariate's spread): each one is
    counted against max-cox-queries and written to the ledger, so the limit stops the probing."""
    grid, node = _grid(world, tmp_path, node_config={"max-cox-queries": 2})
    assert not _ask(grid, node, "query.deviations", _deviations(world)).has_error()
    for beta in (1e4, 1e3):
        assert r"|beta x sd|" in _reason(_ask(grid, node, "query.cox_terms", _cox([0.0, beta], ["cosine", "age"])))
    reason = _reason(_ask(grid, node, "query.cox_terms", _cox([0.0, 0.01], ["cosine", "age"])))
    assert "max-cox-queries" in reason
    entries = _cox_entries(tmp_path)
    assert [e["details"]["beta"] for e in entries] == [[0.0, 1e4], [0.0, 1e3]]
    assert all(e["details"]["refused"] == "beta-bound" and "gradient" not in e["details"] for e in entries)


def test_max_cox_queries_is_the_sites_lifetime_limit_not_one_runs(world, tmp_path):
    """A new run (a new Flower run id, the same site and ledger) starts with what earlier runs left."""
    grid, node = _grid(world, tmp_path, node_config={"max-cox-queries": 3})
    assert not _ask(grid, node, "query.deviations", _deviations(world)).has_error()
    for k in range(2):
        assert not _ask(grid, node, "query.cox_terms", _cox([0.1 * k, 0.0], ["cosine", "age"])).has_error()
    later, later_node = _grid(world, tmp_path, node_config={"max-cox-queries": 3})
    later.contexts[later_node].run_id = 2  # another run: its node state starts empty
    assert not _ask(later, later_node, "query.deviations", _deviations(world)).has_error()
    assert not _ask(later, later_node, "query.cox_terms", _cox([0.3, 0.0], ["cosine", "age"])).has_error()
    reason = _reason(_ask(later, later_node, "query.cox_terms", _cox([0.4, 0.0], ["cosine", "age"])))
    assert "max-cox-queries = 3" in reason and "lifetime" in reason
    _leaks_nothing(reason)
    assert len(_cox_entries(tmp_path)) == 3


def test_a_run_may_ask_for_fewer_cox_queries_than_the_site_allows_in_its_lifetime(world, tmp_path):
    grid, node = _grid(world, tmp_path, node_config={"max-cox-queries": 10}, max_cox_queries=1)
    assert not _ask(grid, node, "query.deviations", _deviations(world)).has_error()
    assert not _ask(grid, node, "query.cox_terms", _cox([0.1, 0.0], ["cosine", "age"])).has_error()
    assert "max-cox-queries = 1" in _reason(_ask(grid, node, "query.cox_terms", _cox([0.2, 0.0], ["cosine", "age"])))


# ---- a run is held to what it declared --------------------------------------------------------
def _stats_query(world):
    return RecordDict({"dae": world["weights"],
                       "config": ConfigRecord({"dae-config": json.dumps(world["dae"]),
                                               "design": json.dumps(DesignSpec().to_dict())})})


def _train(world, round_number):
    return RecordDict({"arrays": world["weights"],
                       "config": ConfigRecord({"server-round": round_number, "dae-config": json.dumps(world["dae"]),
                                               "local-epochs": 1, "ema-step": 0, "seed": 0})})


def test_a_private_site_trains_no_more_rounds_than_the_run_declared(world, tmp_path):
    grid, node = _grid(world, tmp_path, rounds=1)
    assert not _ask(grid, node, "train", _train(world, 1)).has_error()
    for round_number in (2, 1):  # one more round, or the same round again
        reason = _reason(_ask(grid, node, "train", _train(world, round_number)))
        assert "'rounds'" in reason, reason
        _leaks_nothing(reason)
    assert [e["mechanism"] for e in _ledger(tmp_path)] == ["dp-sgd"]


def test_no_release_takes_the_site_past_the_runs_target_epsilon(world, tmp_path):
    """target-epsilon is what the run declared it would spend: a second moments release that
    would go past it is refused, although the site's own caps would still allow it."""
    from ndae.privacy.accountant import epsilon_of

    config = _config(world["root"])
    one = epsilon_of([(config.moments_noise_multiplier, 1.0, 1)], 1e-5)
    two = epsilon_of([(config.moments_noise_multiplier, 1.0, 1)] * 2, 1e-5)
    grid, node = _grid(world, tmp_path, target_epsilon=(one + two) / 2)
    assert not _ask(grid, node, "query.normative_stats", _stats_query(world)).has_error()
    reason = _reason(_ask(grid, node, "query.normative_stats", _stats_query(world)))
    assert "target-epsilon" in reason and "PrivacyBudgetExceeded" in reason, reason
    assert [e["mechanism"] for e in _ledger(tmp_path)] == ["gaussian-moments"]


# ---- what an error reply may say ---------------------------------------------------------------
def test_a_delta_too_large_for_the_site_is_refused_without_its_number_of_records(world, tmp_path):
    grid, node = _grid(world, tmp_path, node_config={"delta": 0.5})
    reason = _reason(_ask(grid, node, "query.normative_stats", _stats_query(world)))
    assert "'delta'" in reason
    bound = 1.0 / CONTROLS ** 1.1
    assert f"{bound:.3g}" not in reason and f"{CONTROLS} records" not in reason, reason
    _leaks_nothing(reason)
    assert not _ledger(tmp_path)


# ---- a deployed SuperNode is private unless its administrator opts out ------------------------
def _site_info(node_config, privacy: bool):
    from flwr.app import Context

    from ndae.federation.inprocess import _set_task_identity
    from ndae.federation.site.handlers import HANDLERS

    _set_task_identity()  # what Flower sets in a ClientApp process: a Message needs it
    context = Context(run_id=1, node_id=1, node_config=dict(node_config), state=RecordDict(),
                      run_config=FederationConfig(privacy=privacy).to_run_config())
    return HANDLERS["query.site_info"](Message(RecordDict(), dst_node_id=1, message_type="query.site_info"), context)


def _started_as_the_deploy_readme_shows(tmp_path) -> dict:
    """The node config deploy/start-supernode.sh passes when NDAE_NODE_CONFIG sets nothing."""
    from flwr.common.config import parse_config_args

    script = (REPO / "deploy" / "start-supernode.sh").read_text()
    (line,) = [x for x in script.splitlines() if x.startswith("node_config=")]
    text = line.split("=", 1)[1].strip('"').replace("${NDAE_NODE_CONFIG:-}", "").replace('\\"', '"')
    values = {"$NDAE_MANIFEST": str(tmp_path / "no-such" / "manifest.csv"), "$NDAE_SITE_NAME": "hospital-a",
              "$NDAE_SITE_DIR": str(tmp_path / "site")}
    for variable, value in values.items():
        text = text.replace(variable, value)
    return parse_config_args([text.strip()])


def test_a_supernode_started_as_deploy_readme_shows_refuses_a_non_private_run(tmp_path, monkeypatch):
    from ndae.errors import NdaeError
    from ndae.federation.site.policy import PolicyViolation

    monkeypatch.delenv("NDAE_SITE_DIR", raising=False)
    node = _started_as_the_deploy_readme_shows(tmp_path)
    assert "site-dir" in node and not set(node) & {"privacy-dir", "budget-epsilon", "require-privacy"}
    with pytest.raises(PolicyViolation, match="'privacy'"):  # refused before the (absent) manifest is read
        _site_info(node, privacy=False)
    with pytest.raises(NdaeError, match="site's log") as opted_out:  # the administrator's explicit opt-out
        _site_info({**node, "require-privacy": "false"}, privacy=False)
    # past the policy, to the (absent) manifest, whose path a deployed site keeps to itself in any run
    assert not isinstance(opted_out.value, PolicyViolation) and str(tmp_path) not in str(opted_out.value)
    hand_written = {k: v for k, v in node.items() if k != "site-dir"}  # the launch wrapper's environment alone
    monkeypatch.setenv("NDAE_SITE_DIR", str(tmp_path / "site"))
    with pytest.raises(PolicyViolation, match="'privacy'"):
        _site_info(hand_written, privacy=False)


def test_a_simulated_node_keeps_its_non_private_default(monkeypatch):
    from ndae.federation.site.policy import SitePolicy

    monkeypatch.delenv("NDAE_SITE_DIR", raising=False)
    assert not SitePolicy.from_node_config({"partition-id": 0, "num-partitions": 3}).require_privacy
    assert not SitePolicy.from_node_config({"manifest": "/data/site1/manifest.csv"}).require_privacy  # InProcessGrid


def test_the_deploy_readme_start_command_shows_the_sites_policy_keys():
    readme = (REPO / "deploy" / "README.md").read_text()
    section = readme.split("## 5. Start a hospital's SuperNode", 1)[1].split("\n## ", 1)[0]
    command = section.split("```bash", 1)[1].split("```", 1)[0]
    (line,) = [x for x in command.splitlines() if x.startswith("NDAE_NODE_CONFIG=")]
    for key in ("privacy-dir=", "budget-epsilon=", "max-epsilon-per-run=", "max-cox-queries="):
        assert key in line, key
    assert "require-privacy=false" not in command
