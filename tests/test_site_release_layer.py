"""The site's release layer (`ndae/federation/site/releases.py`): one release table in code, the
one docs/privacy.md shows, and a private site that sends no reply field the table does not name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from ndae.federation.config import FederationConfig
from ndae.testing.synthetic_cohort import make_synthetic_cohort

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- release-table: generated from ndae/federation/site/releases.py -->", "<!-- release-table: end -->"


def _docs_block() -> str:
    text = (REPO / "docs" / "privacy.md").read_text()
    assert START in text and END in text, "docs/privacy.md lacks the release-table markers"
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def test_the_docs_release_table_is_the_table_in_code():
    from ndae.federation.site.releases import markdown_table

    assert _docs_block() == markdown_table(), "regenerate: python -m ndae.federation.site.releases"


def test_every_handler_and_every_ledger_mechanism_is_in_the_release_table_and_the_docs():
    from ndae.federation.site.handlers import HANDLERS
    from ndae.federation.site.releases import RELEASES, mechanisms
    from ndae.privacy.ledger import MECHANISMS

    assert {r.message for r in RELEASES} == set(HANDLERS)
    assert mechanisms() == set(MECHANISMS)
    block = _docs_block()
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| [^|]+ \| ([^|]+) \|", block, re.M)
    assert {message for message, _ in rows} == set(HANDLERS)
    assert {m.strip().strip("`") for _, m in rows} - {"—"} == set(MECHANISMS)


@pytest.fixture(scope="module")
def site_manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("release-layer")
    make_synthetic_cohort(root / "cohort", sites=1, controls_per_site=3, patients_per_site=2, seed=3)
    return root / "cohort" / "sites" / "site1" / "manifest.csv"


def _context(manifest: Path, tmp_path: Path, privacy: bool) -> Context:
    from ndae.federation.inprocess import _set_task_identity

    _set_task_identity()  # what Flower sets in a ClientApp process: a Message needs it
    node = {"manifest": str(manifest), "privacy-dir": str(tmp_path / "ledger")} if privacy else {
        "manifest": str(manifest)}
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(),
                   run_config=FederationConfig(privacy=privacy, cohort_dir=str(manifest.parents[2]),
                                               run_dir=str(tmp_path / "run")).to_run_config())


def test_a_reply_field_not_in_the_release_table_cannot_leave_a_private_site(site_manifest, tmp_path, monkeypatch):
    """A handler that grows a field (here `site_info` telling the controls' ages) is refused by
    the layer in a private run, whatever the handler does; a non-private run sends it."""
    import ndae.federation.site.data as data
    import ndae.federation.site.handlers as handlers
    from ndae.federation.site.context import SiteRefusal

    told = data.site_info

    def site_info_and_ages(site):
        return {**told(site), "ages": ",".join(str(a) for a in site.data.ages)}

    monkeypatch.setattr(handlers, "site_info", site_info_and_ages)
    context = _context(site_manifest, tmp_path, privacy=False)
    message = Message(RecordDict(), dst_node_id=1, message_type="query.site_info")
    reply = handlers.HANDLERS["query.site_info"](message, context)
    assert "ages" in reply.content["info"]
    with pytest.raises(SiteRefusal, match="'info.ages'.*not in the site's release table"):
        handlers.HANDLERS["query.site_info"](message, _context(site_manifest, tmp_path, privacy=True))


def test_an_undeclared_reply_record_is_refused_and_withheld_ones_are_dropped(site_manifest, tmp_path):
    from flwr.app import MetricRecord

    from ndae.federation.site.context import SiteRefusal
    from ndae.federation.site.releases import release_layer

    @release_layer("query.deviations")
    def grown(message, gate):
        return {"moments": MetricRecord({"n": 3}), **({"extra": ConfigRecord({"x": 1})} if extra else {})}

    context = _context(site_manifest, tmp_path, privacy=True)
    message = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type="query.deviations")
    extra = False
    reply = grown(message, context)
    assert set(reply.content.keys()) == {"privacy"}  # exact moments withheld, the ledger excerpt attached
    assert set(grown(message, _context(site_manifest, tmp_path, privacy=False)).content.keys()) == {"moments"}
    extra = True
    with pytest.raises(SiteRefusal, match="'extra'"):
        grown(message, _context(site_manifest, tmp_path, privacy=True))


# ---- keys inside a record: named one by one, never by a prefix --------------------------------------
def test_no_released_row_matches_by_pattern_and_every_released_record_names_its_keys():
    """A row with `*` would declare keys nobody has written yet; a declared or sent record
    without key rows would pass any key a handler adds to it. Only the pooled rows (their
    columns are the pseudonymised table the `shared-scores` line records) go out whole, and the
    DP mechanisms' outputs."""
    from ndae.federation.site.releases import DECLARED, LEDGER_FIELD, NOISED, RELEASES, SENT

    released = [r for r in RELEASES if not r.request and r.private in (DECLARED, SENT, NOISED)]
    assert [r.field for r in released if "*" in r.field] == []
    for r in released:
        if "." in r.field or r.field in (LEDGER_FIELD, "rows") or r.private == NOISED:
            continue
        assert any(o.message == r.message and o.field.startswith(r.field + ".") for o in RELEASES), (r.message, r.field)


def test_a_declared_record_without_a_mechanism_is_a_standing_declaration_of_counts():
    """Declared releases are ledger lines (their mechanism), except the counts a site's
    administrator declares public once, in the node config (`public-counts`)."""
    from ndae.federation.site.releases import DECLARED, LEDGER_FIELD, RELEASES

    unlogged = [(r.message, r.field) for r in RELEASES if r.private == DECLARED and not r.request
                and "." not in r.field and r.field != LEDGER_FIELD and not r.mechanism]
    assert all(next(r.allowed_by for r in RELEASES if (r.message, r.field) == u) == "public-counts" for u in unlogged)


@pytest.mark.parametrize("message_type, content, public_counts", [
    ("query.normative_stats", {"privacy": ConfigRecord({"controls": 3})}, False),  # an undeclared ledger key
    ("query.normative_stats", {"privacy": ConfigRecord({"ledger-head": "forged"})}, False),  # the signed head
    ("train", {"privacy": ConfigRecord({"noise-multiplier": 1.0, "epsilon": 0.0})}, False),  # ε the site signs
    ("query.risk_summary", {"summary": "paired_patient_risks"}, False),  # a new key beside paired_sums
    ("query.deviations", {"counts": {"patients": 2, "events": 1, "ages": [61.0, 74.0]}}, True),
])
def test_a_key_the_table_does_not_name_cannot_leave_inside_a_released_record(site_manifest, tmp_path, message_type,
                                                                          content, public_counts):
    import numpy as np
    from flwr.app import MetricRecord

    from ndae.federation.records import arrays_to_record
    from ndae.federation.site.context import SiteRefusal
    from ndae.federation.site.releases import release_layer

    if "summary" in content:
        content = {"summary": arrays_to_record({"comparable": np.zeros(1), "concordant": np.zeros(1),
                                                "paired_sums": np.zeros(3), content["summary"]: np.arange(5.0)})}
    if "counts" in content:
        content = {"counts": MetricRecord(content["counts"])}

    @release_layer(message_type)
    def grown(message, gate):
        return dict(content)

    context = _context(site_manifest, tmp_path, privacy=True)
    context.node_config["public-counts"] = public_counts
    message = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type=message_type)
    with pytest.raises(SiteRefusal, match="not in the site's release table|names ledger fields"):
        grown(message, context)
