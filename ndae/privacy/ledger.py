"""Hash-chained privacy ledger: one JSONL file per site, `privacy/<site>.jsonl`.

Every privacy-consuming release (a DP-SGD round, noised sufficient statistics, shared deviation
scores) is one line. Each line carries `prev_hash` (the previous line's `hash`; 64 zeros for the
first) and `hash` = sha256 of the canonical JSON of the line without `hash`. Editing, deleting,
inserting or reordering a line breaks the chain at a line we can name; cutting lines off the end
is caught only against a final hash kept elsewhere (the server's copy of each site's head, or
`privacy/heads.json`), because a shorter chain is still a valid chain.

The server keeps an EXCERPT (`ledger_excerpt`, read with `read_excerpt`): another run's declared
releases are replaced by a stub {"index", "prev_hash", "hash", "redacted": true}. The chain still
verifies through a stub (the next line's prev_hash fixes its hash); a site's own ledger never
holds one (`read_ledger` refuses it). Ledgers and their lock files are written 0600.

Appends are crash-safe by rewriting the whole file through `ndae.io.atomic_write_bytes` (temp
file + fsync + rename): a killed process leaves either the old file or the new one, never a
half-written last line, and existing lines are never touched in place. Ledgers hold one line per
round or release (hundreds at most), so rewriting costs microseconds. A lock file serialises
concurrent writers on the same site, and the existing chain is verified before it is extended,
so a tampered ledger is never silently "re-sealed" by a new entry.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from ndae.errors import LedgerError, NdaeError
from ndae.io import atomic_write_bytes, atomic_write_json

GENESIS_HASH = "0" * 64
MECHANISMS = ("dp-sgd", "gaussian-moments", "shared-scores", "cox-terms", "risk-summary", "score-histograms")
ACCOUNTED_MECHANISMS = ("dp-sgd", "gaussian-moments")  # with an epsilon; the others are declared, non-DP releases
FIELDS = (
    "index", "time", "site", "mechanism", "noise_multiplier", "clip", "sample_rate", "steps",
    "records_touched", "delta", "epsilon_spent_so_far", "accountant", "prev_hash", "hash",
)  # + optional "details" (round, run id, app hash, ...), covered by the hash like the rest


def canonical_json(obj: Any) -> str:
    """The one serialisation that is hashed: sorted keys, no spaces, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(entry: Mapping[str, Any]) -> str:
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def encode_epsilon(epsilon: float) -> float | str:
    """JSON has no infinity: an unbounded epsilon (noise-free release) is written as "inf"."""
    return "inf" if math.isinf(epsilon) else float(epsilon)


def decode_epsilon(value: float | str) -> float:
    return math.inf if value == "inf" else float(value)


def ledger_path(run_dir: str | os.PathLike, site: str) -> Path:
    if not site or "/" in site or site.startswith("."):
        raise LedgerError(f"site name {site!r} cannot name a ledger file under privacy/")
    return Path(run_dir) / "privacy" / f"{site}.jsonl"


def read_ledger(path: str | os.PathLike, expected_final_hash: str | None = None) -> list[dict]:
    """All entries of a verified ledger (an absent file is an empty ledger)."""
    entries, _ = _verified(Path(path), expected_final_hash)
    return entries


def read_excerpt(path: str | os.PathLike, expected_final_hash: str | None = None) -> list[dict]:
    """A verified ledger excerpt (what a site sends the server, `ledger_excerpt`): full lines and
    REDACTED stubs. A stub's own content cannot be checked, but its hash is fixed by the next
    line's prev_hash and, through the chain, by the signed head."""
    entries, _ = _verified(Path(path), expected_final_hash, stubs=True)
    return entries


STUB_FIELDS = ("index", "prev_hash", "hash", "redacted")


def is_stub(entry: Mapping[str, Any]) -> bool:
    return entry.get("redacted") is True


def ledger_excerpt(lines: list[str], entries: list[dict], run: str) -> str:
    """What the server of `run` may keep of a site's ledger: this run's lines and every DP release
    (their noise, sample rate and steps are what an auditor recomputes the lifetime ε from), in
    full and byte for byte; every other line (another run's declared release: its Cox terms,
    concordance counts, scores) as a stub holding only its place in the chain."""
    out = []
    for line, entry in zip(lines, entries):
        mine = entry.get("details", {}).get("run") == run if isinstance(entry.get("details"), dict) else False
        if mine or entry["mechanism"] in ACCOUNTED_MECHANISMS:
            out.append(line if line.endswith("\n") else line + "\n")
        else:
            out.append(canonical_json({"index": entry["index"], "prev_hash": entry["prev_hash"],
                                       "hash": entry["hash"], "redacted": True}) + "\n")
    return "".join(out)


def verify_ledger(path: str | os.PathLike, expected_final_hash: str | None = None) -> str:
    """Check the chain line by line; return the final hash (GENESIS_HASH for an empty ledger).

    Raises LedgerError naming the file and the first bad line for an edited, deleted, inserted
    or reordered line, and for a truncated (or extended) ledger when `expected_final_hash` is given.
    """
    _, final = _verified(Path(path), expected_final_hash)
    return final


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf: as bad as a literal Infinity
        raise ValueError(f"{text} overflows to {value}")
    return value


def read_strict_json_file(path: Path, what: str) -> Any:
    """A JSON file read strictly (UTF-8, no NaN/Infinity), every failure an NdaeError naming it."""
    try:
        return strict_json_loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise NdaeError(f"{path}: not UTF-8 text (byte {error.start + 1})") from None
    except json.JSONDecodeError as error:
        raise NdaeError(f"{path}: not valid JSON ({error.msg}, line {error.lineno} column {error.colno})") from None
    except (ValueError, RecursionError, OSError) as error:
        raise NdaeError(f"{path}: not a valid {what} ({error})") from None


def strict_json_loads(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and overflowing numbers (Python accepts all three,
    and one NaN in a ledger would make every epsilon comparison silently false)."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field_problem(entry: Mapping[str, Any]) -> str | None:
    """Type of every field the audit computes with (a well-chained line may still carry junk)."""
    for name in ("index", "steps", "records_touched"):
        if not isinstance(entry[name], int) or isinstance(entry[name], bool) or entry[name] < 0:
            return f"field {name!r} must be an integer >= 0, not {entry[name]!r}"
    for name in ("noise_multiplier", "clip", "sample_rate", "delta"):
        if not _is_number(entry[name]) or entry[name] < 0:
            return f"field {name!r} must be a number >= 0, not {entry[name]!r}"
    eps = entry["epsilon_spent_so_far"]
    if not (eps == "inf" or (_is_number(eps) and eps >= 0)):
        return f"field 'epsilon_spent_so_far' must be a number >= 0 or \"inf\", not {eps!r}"
    for name in ("time", "site", "mechanism", "accountant", "prev_hash", "hash"):
        if not isinstance(entry[name], str):
            return f"field {name!r} must be a string, not {entry[name]!r}"
    return None


def _stub_problem(entry: Mapping[str, Any]) -> str | None:
    if sorted(entry) != sorted(STUB_FIELDS):
        return f"a redacted line holds exactly {', '.join(STUB_FIELDS)}"
    for name in ("prev_hash", "hash"):
        if not isinstance(entry[name], str) or len(entry[name]) != 64 or any(c not in "0123456789abcdef" for c in entry[name]):
            return f"field {name!r} of a redacted line must be 64 lowercase hex digits"
    if not isinstance(entry["index"], int) or isinstance(entry["index"], bool):
        return "field 'index' must be an integer"
    return None


def _verified(path: Path, expected_final_hash: str | None, stubs: bool = False) -> tuple[list[dict], str]:
    if not path.exists():
        if expected_final_hash not in (None, GENESIS_HASH):
            raise LedgerError(f"{path}: ledger is missing but a final hash {expected_final_hash} was expected")
        return [], GENESIS_HASH
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise LedgerError(f"{path}: cannot read the ledger ({error.strerror or error})") from None
    if raw and not raw.endswith(b"\n"):
        raise LedgerError(f"{path}: last line has no newline (a partial write or a truncated file)")
    entries: list[dict] = []
    previous = GENESIS_HASH
    site = None
    for number, raw_line in enumerate(raw.splitlines(), start=1):
        where = f"{path}, line {number}"
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LedgerError(f"{where}: not UTF-8 text (byte {error.start + 1} of the line)") from None
        try:
            entry = strict_json_loads(line)
        except json.JSONDecodeError as error:
            raise LedgerError(f"{where}: not a JSON object ({error.msg})") from None
        except (ValueError, RecursionError) as error:
            raise LedgerError(f"{where}: not a valid ledger line ({error})") from None
        if not isinstance(entry, dict):
            raise LedgerError(f"{where}: not a JSON object")
        if "redacted" in entry:
            problem = _stub_problem(entry) if stubs else "a redacted line, where a full ledger is expected"
            if problem:
                raise LedgerError(f"{where}: {problem}")
            if entry["prev_hash"] != previous:
                raise LedgerError(f"{where}: prev_hash does not match the hash of line {number - 1} "
                                  f"(a line was deleted, inserted or reordered before this one)")
            if entry["index"] != number - 1:
                raise LedgerError(f"{where}: index {entry['index']} should be {number - 1}")
            entries.append(entry)
            previous = entry["hash"]
            continue
        missing = [field for field in FIELDS if field not in entry]
        if missing:
            raise LedgerError(f"{where}: missing fields {', '.join(missing)}")
        problem = _field_problem(entry)
        if problem:
            raise LedgerError(f"{where}: {problem}")
        if entry["hash"] != entry_hash(entry):
            raise LedgerError(f"{where}: hash does not match the line's content (the entry was edited)")
        if entry["prev_hash"] != previous:
            raise LedgerError(
                f"{where}: prev_hash does not match the hash of line {number - 1} "
                f"(a line was deleted, inserted or reordered before this one)"
            )
        if entry["index"] != number - 1:
            raise LedgerError(f"{where}: index {entry['index']} should be {number - 1}")
        if site is not None and entry["site"] != site:
            raise LedgerError(f"{where}: site {entry['site']!r} differs from {site!r} on line 1")
        site = entry["site"]
        entries.append(entry)
        previous = entry["hash"]
    if expected_final_hash is not None and previous != expected_final_hash:
        raise LedgerError(
            f"{path}: final hash {previous} after {len(entries)} lines does not match the expected "
            f"{expected_final_hash} (lines were cut off the end, or added)"
        )
    return entries, previous


@contextlib.contextmanager
def ledger_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock for one ledger (read-check-append must not interleave)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path.with_name(f".{path.name}.lock"), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def make_entry(
    *,
    index: int,
    prev_hash: str,
    site: str,
    mechanism: str,
    noise_multiplier: float,
    clip: float,
    sample_rate: float,
    steps: int,
    records_touched: int,
    delta: float,
    epsilon_spent_so_far: float,
    accountant: str,
    details: Mapping[str, Any] | None = None,
    time: str | None = None,
) -> dict:
    if mechanism not in MECHANISMS:
        raise LedgerError(f"mechanism {mechanism!r} is not one of {', '.join(MECHANISMS)}")
    entry = {
        "index": int(index),
        "time": time or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        "site": site,
        "mechanism": mechanism,
        "noise_multiplier": float(noise_multiplier),
        "clip": float(clip),
        "sample_rate": float(sample_rate),
        "steps": int(steps),
        "records_touched": int(records_touched),
        "delta": float(delta),
        "epsilon_spent_so_far": encode_epsilon(epsilon_spent_so_far),
        "accountant": accountant,
        "prev_hash": prev_hash,
    }
    if details:
        entry["details"] = json.loads(canonical_json(dict(details)))  # fail now if not JSON
    entry["hash"] = entry_hash(entry)
    return entry


def append_entry(path: str | os.PathLike, **fields: Any) -> dict:
    """Verify the chain, then append one entry (index and prev_hash filled in). Returns it.

    Call under `ledger_lock(path)` when the decision to append depends on what was read.
    """
    path = Path(path)
    entries, final = _verified(path, None)
    entry = make_entry(index=len(entries), prev_hash=final, **fields)
    old = path.read_bytes() if path.exists() else b""
    # 0600: the ledger holds what the site released (Cox terms, run ids): its owner's business
    atomic_write_bytes(path, old + (canonical_json(entry) + "\n").encode("utf-8"), private=True)
    return entry


HEAD_FIELDS = ("final_hash", "entries")  # required; the rest are optional, extra fields tolerated


def heads_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "privacy" / "heads.json"


def write_heads(run_dir: str | os.PathLike, heads: Mapping[str, Mapping[str, Any]]) -> None:
    """Record each site's ledger head in privacy/heads.json:
    {site: {"final_hash", "entries", "run", "run_entries", "epsilon", "delta", "budget_epsilon",
    "insecure_seed", "private", "signature", "public_key"}} ("signature": the site's
    `ndae.privacy.signing.sign_signed_head` over every field but the last two (v2; a v1 head, without
    "run", signed only site, entries and final_hash); "public_key": the PEM key the site says it
    signs with; "epsilon"/"budget_epsilon" may be "inf").

    Kept by whoever receives the releases (the server), so `audit_run` can catch a site ledger
    that was cut short or forged after the fact.
    """
    atomic_write_json(heads_path(run_dir), {k: dict(v) for k, v in heads.items()})


def read_heads(path: str | os.PathLike) -> dict[str, dict]:
    """privacy/heads.json, checked field by field ({} when absent). NdaeError naming the file,
    the site and the field for anything malformed: bad UTF-8 or JSON, NaN, a wrong shape."""
    path = Path(path)
    if not path.exists():
        return {}
    where = str(path)
    heads = read_strict_json_file(path, "heads file")
    if not isinstance(heads, dict):
        raise NdaeError(f"{where}: expected an object {{site: {{\"final_hash\": ..., \"entries\": ...}}}}, "
                        f"got a JSON {type(heads).__name__}")
    for site, head in heads.items():
        at = f"{where}: site {site!r}"
        if not site or "/" in site or site.startswith("."):
            raise NdaeError(f"{at}: not a usable site name")
        if not isinstance(head, dict):
            raise NdaeError(f"{at}: expected an object with final_hash and entries, got {type(head).__name__}")
        missing = [field for field in HEAD_FIELDS if field not in head]
        if missing:
            raise NdaeError(f"{at}: missing {', '.join(missing)}")
        if not isinstance(head["final_hash"], str) or len(head["final_hash"]) != 64 \
                or any(c not in "0123456789abcdef" for c in head["final_hash"]):
            raise NdaeError(f"{at}: final_hash must be 64 lowercase hex digits, not {head['final_hash']!r}")
        if not isinstance(head["entries"], int) or isinstance(head["entries"], bool) or head["entries"] < 0:
            raise NdaeError(f"{at}: entries must be an integer >= 0, not {head['entries']!r}")
        for name in ("signature", "public_key"):
            if name in head and not isinstance(head[name], str):
                raise NdaeError(f"{at}: {name} must be a string, not {type(head[name]).__name__}")
        for name in ("epsilon", "budget_epsilon"):
            if name in head and not (head[name] == "inf" or (_is_number(head[name]) and head[name] >= 0)):
                raise NdaeError(f"{at}: {name} must be a number >= 0 or \"inf\", not {head[name]!r}")
        if "delta" in head and not (_is_number(head["delta"]) and 0 < head["delta"] < 1):
            raise NdaeError(f"{at}: delta must be a number in (0, 1), not {head['delta']!r}")
    return heads
