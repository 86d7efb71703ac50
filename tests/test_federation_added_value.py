"""What the imaging adds over the covariates: the full vs the covariates-only Cox
model's Harrell's C on the same pairs, with a CI computed from per-site aggregates only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from ndae.errors import NdaeError
from ndae.federation.paired_concordance import combine, pooled_paired_concordance, site_aggregates

SITES = ("site1", "site2", "site3")


def _cohort(n: int, seed: int, effect: float):
    """Three sites; true log-hazard 0.6·age_z + effect·score; ~30 % censored, times in months."""
    rng = np.random.default_rng(seed)
    site = rng.integers(0, 3, n)
    age, score = rng.normal(size=n), rng.normal(size=n)
    eta = 0.6 * age + effect * score + 0.3 * site
    event_time = rng.exponential(np.exp(-eta)) * 24
    censor = rng.exponential(60, n)
    return pd.DataFrame({"site": site.astype(str), "age": age, "score": score, "noise": rng.normal(size=n),
                         "time": np.ceil(np.minimum(event_time, censor)), "event": (event_time <= censor).astype(float)})


def _brute_force(table, risk, reference):
    """The same quantity, pair by pair in plain Python (an independent implementation)."""
    a, b, c = (np.zeros(len(table)) for _ in range(3))
    t, e = table["time"].to_numpy(), table["event"].to_numpy() > 0
    s = table["site"].to_numpy()
    for i in range(len(table)):
        for j in range(len(table)):
            if s[i] != s[j] or not e[i] or not (t[i] < t[j] or (t[i] == t[j] and not e[j])):
                continue
            for target, r in ((a, risk), (b, reference)):
                value = 0.5 if abs(r[i] - r[j]) <= 1e-8 else float(r[i] > r[j])
                target[i] += value
                target[j] += value
            c[i] += 1
            c[j] += 1
    pairs = c.sum() / 2
    delta = (a.sum() - b.sum()) / c.sum()
    variance = 0.0
    for site in np.unique(s):
        m = s == site
        d, cc = a[m] - b[m], c[m]
        variance += np.sum(((d - d.mean()) - delta * (cc - cc.mean())) ** 2)
    return a.sum() / c.sum(), b.sum() / c.sum(), delta, np.sqrt(variance) / pairs


def test_site_aggregates_give_the_pooled_within_site_c_and_its_variance():
    from sksurv.metrics import concordance_index_censored

    table = _cohort(90, seed=4, effect=0.8)
    risk = (0.6 * table["age"] + 0.8 * table["score"]).to_numpy()
    reference = (0.6 * table["age"]).to_numpy()
    reference[:5] = reference[0]  # ties in risk count ½
    # the federated path: each site's nine numbers, summed at the server
    per_site = [site_aggregates(part["time"], part["event"], risk[part.index], reference[part.index])
                for _, part in table.groupby("site")]
    federated = combine(per_site)
    c_model, c_reference, delta, se = _brute_force(table, risk, reference)
    assert federated["c_model"] == pytest.approx(c_model, abs=1e-12)
    assert federated["c_reference"] == pytest.approx(c_reference, abs=1e-12)
    assert federated["difference"] == pytest.approx(delta, abs=1e-12)
    assert federated["se"] == pytest.approx(se, rel=1e-10)
    # and scikit-survival's Harrell's C summed over sites (what `risk_summary` reports)
    concordant = comparable = 0.0
    for _, part in table.groupby("site"):
        _, con, dis, tie, _ = concordance_index_censored(part["event"] > 0, part["time"], risk[part.index])
        concordant, comparable = concordant + con + 0.5 * tie, comparable + con + dis + tie
    assert federated["c_model"] == pytest.approx(concordant / comparable, abs=1e-12)
    assert federated["comparable_pairs"] == comparable
    pooled = pooled_paired_concordance(table["time"], table["event"], risk, reference, table["site"])
    assert pooled == pytest.approx(federated)


def test_the_delta_method_se_matches_a_within_site_bootstrap():
    """Tolerance: 300 bootstrap draws estimate an SD to ~±8 % (1 sd); 25 % is > 3 sd."""
    table = _cohort(240, seed=7, effect=0.5)
    risk = (0.6 * table["age"] + 0.5 * table["score"]).to_numpy()
    reference = (0.6 * table["age"]).to_numpy()
    estimate = pooled_paired_concordance(table["time"], table["event"], risk, reference, table["site"])
    rng = np.random.default_rng(0)
    by_site = [np.flatnonzero(table["site"] == s) for s in np.unique(table["site"])]
    draws = []
    for _ in range(300):
        rows = np.concatenate([rng.choice(index, len(index)) for index in by_site])
        draws.append(pooled_paired_concordance(table["time"].to_numpy()[rows], table["event"].to_numpy()[rows],
                                               risk[rows], reference[rows], table["site"].to_numpy()[rows])["difference"])
    assert estimate["se"] == pytest.approx(np.std(draws, ddof=1), rel=0.25)


def _fitted_difference(table, score: str):
    """In-sample within-site difference of two Cox models fitted as the server fits them."""
    from ndae.federation.server.survival import fit_pooled_cox

    full, base = fit_pooled_cox(table, ["age", score]), fit_pooled_cox(table, ["age"])
    risk = table[["age", score]].to_numpy() @ full.params_[["age", score]].to_numpy()
    reference = table[["age"]].to_numpy() @ base.params_[["age"]].to_numpy()
    return pooled_paired_concordance(table["time"], table["event"], risk, reference, table["site"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_pure_noise_score_has_a_ci_covering_zero_and_a_strong_one_a_ci_above_zero(seed):
    table = _cohort(240, seed=seed, effect=1.0)
    noise, strong = _fitted_difference(table, "noise"), _fitted_difference(table, "score")
    assert noise["lower"] < 0 < noise["upper"]
    assert strong["lower"] > 0
    assert strong["upper"] - strong["lower"] < 0.2  # a CI that says something at 240 patients
    small = _fitted_difference(table.iloc[:60].reset_index(drop=True), "score")
    assert small["upper"] - small["lower"] > strong["upper"] - strong["lower"]  # fewer patients, wider CI


def test_the_report_reading_follows_the_ci():
    from ndae.federation.server.report import added_value_lines, added_value_reading

    def reading(lower, upper):
        return added_value_reading({"difference": (lower + upper) / 2, "lower": lower, "upper": upper}, "s", "age")

    assert "adds to the covariates" in reading(0.01, 0.1)
    assert "worse with the imaging" in reading(-0.1, -0.01)
    assert "not distinguishable" in reading(-0.02, 0.05)
    estimate = {"kind": "in-sample, within-site pairs", "ci": "normal", "c_model": 0.71, "c_reference": 0.64,
                "difference": 0.07, "lower": 0.02, "upper": 0.12}
    lines = "\n".join(added_value_lines({"added_value": {"features": ["cosine"], "covariates": ["age", "sex_female"],
                                                         "within_site": estimate}}))
    assert "## What the imaging adds" in lines and "| in-sample, within-site pairs | 0.640 | 0.710 | 0.070" in lines
    assert "age, sex_female" in lines and "fitted on" in lines


# ---- the site's side: what a (hostile) server can ask -------------------------------------------
@pytest.fixture(scope="module")
def site_context(tmp_path_factory):
    """A site that has scored its patients (its survival table in the node state)."""
    from ndae.federation.config import FederationConfig
    from ndae.federation.inprocess import _set_task_identity
    from ndae.federation.records import frame_to_record
    from ndae.federation.site.context import FEATURES_KEY, STATE_KEY
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    _set_task_identity()  # messages built outside a ServerApp process need one
    root = tmp_path_factory.mktemp("added-value")
    make_synthetic_cohort(root / "cohort", sites=1, controls_per_site=3, patients_per_site=12, seed=2)
    manifest = root / "cohort" / "sites" / "site1" / "manifest.csv"
    rows = pd.read_csv(manifest)
    patients = rows[rows["group"] != "control"].reset_index(drop=True)
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"subject": patients["subject"].astype(str), "site": "site1",
                          "age": patients["age"].astype(float), "sex_female": rng.integers(0, 2, len(patients)) * 1.0,
                          "time": np.arange(1.0, len(patients) + 1), "event": (np.arange(len(patients)) % 3 > 0) * 1.0,
                          "cosine": rng.normal(size=len(patients))})
    config = FederationConfig(run_dir=str(root / "run"), cache_dir=str(root / "cache"), survival_mode="federated",
                              privacy=True)
    ledgers = iter(range(10**6))

    def context(max_queries: int = 60):
        state = RecordDict({STATE_KEY: frame_to_record(table), FEATURES_KEY: ConfigRecord({"features": ["cosine"]})})
        ledger = root / f"ledger{next(ledgers)}"
        made = Context(run_id=1, node_id=1, state=state, run_config=config.to_run_config(),
                       node_config={"manifest": str(manifest), "max-cox-queries": max_queries,
                                    "privacy-dir": str(ledger)})
        return made, ledger / "site1.jsonl"

    return context, table


def _ask(context, beta, covariates, reference=None):
    from ndae.federation.server.newton import beta_message
    from ndae.federation.site.survival_queries import handle_risk_summary

    message = Message(beta_message(np.asarray(beta, float), covariates, reference), dst_node_id=1,
                      message_type="query.risk_summary")
    return handle_risk_summary(message, context)


def test_the_risk_summary_sends_aggregates_of_both_models_only(site_context):
    from ndae.federation.site.context import QUERIES_KEY

    from ndae.privacy.ledger import read_ledger

    make, table = site_context
    context, ledger = make()
    reply = _ask(context, [0.5, 0.02], ["cosine", "age"], (np.array([0.02]), ["age"])).content["summary"]
    shapes = {key: reply[key].numpy().shape for key in reply.keys()}
    # nine numbers for the pair comparison, two counts, KM counts per (tertile, month): never one per patient
    assert shapes["paired_sums"] == (3,) and shapes["paired_cross"] == (3, 3)
    assert shapes["comparable"] == () and shapes["concordant"] == ()
    assert all(len(table) not in shape for key, shape in shapes.items() if key != "km")
    expected = pooled_paired_concordance(table["time"], table["event"], 0.5 * table["cosine"] + 0.02 * table["age"],
                                         0.02 * table["age"])
    got = combine([{"sums": reply["paired_sums"].numpy(), "cross": reply["paired_cross"].numpy()}])
    assert got == pytest.approx(expected)
    assert float(reply["concordant"].numpy()) / float(reply["comparable"].numpy()) == pytest.approx(expected["c_model"])
    assert int(context.state[QUERIES_KEY]["cox"]) == 2  # two β evaluated on the rows: two queries counted
    (entry,) = read_ledger(ledger)  # declared in the site's ledger: both models and the nine numbers sent
    assert entry["mechanism"] == "risk-summary" and entry["details"]["reference_covariates"] == ["age"]
    np.testing.assert_allclose(entry["details"]["paired_cross"], reply["paired_cross"].numpy())


@pytest.mark.parametrize("reference, why", [
    ((np.array([1.0]), ["time"]), "covariates must be distinct names among"),  # an oracle of follow-up
    ((np.array([1.0]), ["event"]), "covariates must be distinct names among"),
    ((np.array([1e4]), ["age"]), r"\|beta x sd\|"),  # a huge β singles out the oldest patient
    ((np.array([np.nan]), ["age"]), "finite numbers"),
    ((np.array([1.0, 0.0]), ["age"]), "finite numbers"),
])
def test_a_reference_model_is_checked_like_the_model_before_anything_is_counted(site_context, reference, why):
    from ndae.federation.site.context import QUERIES_KEY

    make, _ = site_context
    context, ledger = make()
    with pytest.raises(NdaeError, match=why):
        _ask(context, [0.5, 0.02], ["cosine", "age"], reference)
    if why != r"\|beta x sd\|":
        assert QUERIES_KEY not in context.state and not ledger.exists()  # refused: not answered, not counted
    else:  # the bound depends on the patients' spread: the refusal is an answer, counted and recorded
        from ndae.privacy.ledger import read_ledger

        (entry,) = read_ledger(ledger)
        assert int(context.state[QUERIES_KEY]["cox"]) == 2 and entry["details"]["refused"] == "beta-bound"


def test_the_two_evaluations_must_fit_in_the_sites_query_limit(site_context):
    from ndae.federation.site.policy import PolicyViolation

    make, _ = site_context
    context, _ = make(max_queries=1)
    with pytest.raises(PolicyViolation, match="max-cox-queries = 1"):
        _ask(context, [0.5, 0.02], ["cosine", "age"], (np.array([0.02]), ["age"]))
    _ask(context, [0.5, 0.02], ["cosine", "age"])  # one model alone is one query, still within the limit


def test_the_demo_puts_c_star_on_the_federations_pairs_beside_both_models():
    from ndae.federation.demo import _find_c_index, _same_pairs_sentence

    table = _cohort(60, seed=5, effect=1.0)
    truth = table.assign(subject=[f"P{i}" for i in range(len(table))], risk=0.6 * table["age"] + table["score"])
    controls = pd.DataFrame({"subject": ["C1", "C2"], "site": ["0", "1"], "risk": np.nan, "time": np.nan,
                             "event": np.nan})
    in_federation = truth[truth["site"] != "2"]  # site "2" did not answer: its pairs are not the federation's
    fitted = pooled_paired_concordance(in_federation["time"], in_federation["event"], in_federation["age"] +
                                       in_federation["score"], in_federation["age"], in_federation["site"])
    within = {**fitted, "sites": ["0", "1"]}
    summary = {"survival": {"added_value": {"features": ["score"], "covariates": ["age"], "within_site": within}}}
    sentence = _same_pairs_sentence(pd.concat([truth, controls]), *_find_c_index(summary))
    oracle = pooled_paired_concordance(in_federation["time"], in_federation["event"], in_federation["risk"],
                                       in_federation["risk"], in_federation["site"])["c_model"]
    assert f"C\\* = {oracle:.3f}" in sentence and "On the same within-site pairs" in sentence
    assert f"{within['c_reference']:.3f}" in sentence and f"{within['c_model']:.3f}" in sentence
    assert f"{len(in_federation)} patients of 0, 1" in sentence and "% of C" not in sentence
    assert _find_c_index({"survival": {"c_index_within_site": 0.7}}) is None  # an old summary: no claim made
