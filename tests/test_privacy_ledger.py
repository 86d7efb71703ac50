"""Hash-chained ledger: tampering of every kind is caught and named by file and line."""

from __future__ import annotations

import json

import pytest

from ndae.errors import LedgerError
from ndae.privacy.ledger import GENESIS_HASH, append_entry, entry_hash, read_ledger, verify_ledger


def _event(i: int) -> dict:
    return dict(site="site-a", mechanism="dp-sgd", noise_multiplier=1.0 + i / 10, clip=1.0,
                sample_rate=0.1, steps=10, records_touched=50, delta=1e-5,
                epsilon_spent_so_far=0.5 * (i + 1), accountant="rdp", details={"round": i})


@pytest.fixture()
def ledger(tmp_path):
    path = tmp_path / "privacy" / "site-a.jsonl"
    for i in range(4):
        append_entry(path, **_event(i))
    return path


def _lines(path):
    return path.read_text().splitlines(keepends=True)


def test_chain_links_and_hashes(ledger):
    entries = read_ledger(ledger)
    assert [e["index"] for e in entries] == [0, 1, 2, 3]
    assert entries[0]["prev_hash"] == GENESIS_HASH
    for before, after in zip(entries, entries[1:]):
        assert after["prev_hash"] == before["hash"]
    assert all(e["hash"] == entry_hash(e) for e in entries)
    assert verify_ledger(ledger) == entries[-1]["hash"]
    assert verify_ledger(ledger, entries[-1]["hash"]) == entries[-1]["hash"]


def test_append_keeps_existing_bytes(ledger):
    before = ledger.read_bytes()
    append_entry(ledger, **_event(4))
    assert ledger.read_bytes().startswith(before)
    assert not list(ledger.parent.glob("*.tmp"))  # no temp files left behind


def test_edit_is_named(ledger):
    lines = _lines(ledger)
    entry = json.loads(lines[1])
    entry["noise_multiplier"] = 50.0  # pretend more noise was used
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    ledger.write_text("".join(lines))
    with pytest.raises(LedgerError, match=r"site-a\.jsonl, line 2: hash does not match"):
        verify_ledger(ledger)


def test_edit_with_rehash_breaks_next_link(ledger):
    lines = _lines(ledger)
    entry = json.loads(lines[1])
    entry["steps"] = 1
    entry["hash"] = entry_hash(entry)  # a forger recomputes this line's hash ...
    lines[1] = json.dumps(entry) + "\n"
    ledger.write_text("".join(lines))
    with pytest.raises(LedgerError, match=r"line 3: prev_hash"):  # ... the next line gives it away
        verify_ledger(ledger)


def test_delete_is_named(ledger):
    lines = _lines(ledger)
    del lines[2]
    ledger.write_text("".join(lines))
    with pytest.raises(LedgerError, match=r"site-a\.jsonl, line 3: prev_hash"):
        verify_ledger(ledger)


def test_reorder_is_named(ledger):
    lines = _lines(ledger)
    lines[1], lines[2] = lines[2], lines[1]
    ledger.write_text("".join(lines))
    with pytest.raises(LedgerError, match=r"line 2: prev_hash"):
        verify_ledger(ledger)


def test_truncation_needs_and_uses_the_expected_head(ledger):
    head = verify_ledger(ledger)
    ledger.write_text("".join(_lines(ledger)[:2]))
    verify_ledger(ledger)  # a shorter chain is still a chain ...
    with pytest.raises(LedgerError, match=r"site-a\.jsonl: final hash .* after 2 lines"):
        verify_ledger(ledger, head)  # ... but not the one the server saw


def test_partial_last_line_is_caught(ledger):
    ledger.write_bytes(ledger.read_bytes()[:-20])
    with pytest.raises(LedgerError, match="site-a.jsonl"):
        verify_ledger(ledger)


def test_append_refuses_a_tampered_chain(ledger):
    lines = _lines(ledger)
    del lines[0]
    ledger.write_text("".join(lines))
    with pytest.raises(LedgerError, match="line 1"):
        append_entry(ledger, **_event(9))


def test_non_utf8_line_is_named(ledger):
    lines = ledger.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"accountant":"rdp"', b'"accountant":"rd\xff"')
    ledger.write_bytes(b"".join(lines))
    with pytest.raises(LedgerError, match=r"site-a\.jsonl, line 3: not UTF-8"):
        verify_ledger(ledger)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused_even_when_rehashed(ledger, literal):
    """Python's json reads NaN and Infinity; one NaN makes every epsilon comparison false."""
    lines = _lines(ledger)
    entry = json.loads(lines[0])
    entry["noise_multiplier"] = float("nan")
    entry["hash"] = "0" * 64
    text = json.dumps(entry, sort_keys=True, separators=(",", ":")).replace("NaN", literal)
    ledger.write_text(text + "\n" + "".join(lines[1:]))
    with pytest.raises(LedgerError, match=rf"site-a\.jsonl, line 1: not a valid ledger line .*{literal}"):
        verify_ledger(ledger)


@pytest.mark.parametrize("field,value", [("steps", "ten"), ("noise_multiplier", None), ("delta", -1.0),
                                         ("epsilon_spent_so_far", "lots"), ("site", 3), ("index", True)])
def test_a_well_chained_line_with_a_junk_field_is_named(tmp_path, field, value):
    from ndae.privacy.ledger import canonical_json

    path = tmp_path / "site-a.jsonl"
    append_entry(path, **_event(0))
    entry = json.loads(path.read_text())
    entry[field] = value
    entry["hash"] = entry_hash(entry)  # a consistent chain: only the type is wrong
    path.write_text(canonical_json(entry) + "\n")
    with pytest.raises(LedgerError, match=rf"line 1: field '{field}' must be"):
        verify_ledger(path)


def test_heads_are_read_strictly(tmp_path):
    from ndae.errors import NdaeError
    from ndae.privacy.ledger import heads_path, read_heads, write_heads

    assert read_heads(heads_path(tmp_path)) == {}
    head = {"final_hash": "a" * 64, "entries": 2, "epsilon": "inf", "delta": 1e-5, "budget_epsilon": 8.0,
            "signature": "c2ln", "public_key": "PEM", "added-later": [1, 2]}  # extra fields tolerated
    write_heads(tmp_path, {"site-a": head})
    assert read_heads(heads_path(tmp_path)) == {"site-a": head}
    path = heads_path(tmp_path)
    for text, message in (("{not json", r"heads\.json: not valid JSON"), ("[1, 2]", "got a JSON list"),
                          ('{"site-a": 3}', "site 'site-a': expected an object"),
                          ('{"site-a": {"entries": 1}}', "missing final_hash"),
                          ('{"site-a": {"final_hash": "xyz", "entries": 1}}', "final_hash must be"),
                          ('{"site-a": {"final_hash": "' + "a" * 64 + '", "entries": NaN}}', "NaN"),
                          ('{"site-a": {"final_hash": "' + "a" * 64 + '", "entries": 1, "delta": 2}}', "delta")):
        path.write_text(text)
        with pytest.raises(NdaeError, match=message):
            read_heads(path)
    path.write_bytes(b'{"site-\xff": {}}')
    with pytest.raises(NdaeError, match="heads.json: not UTF-8"):
        read_heads(path)
