"""Subject and site ids: the one place an id from a manifest becomes a file name.

Ids name files (`<cache>/<subject>.npz`, `<run>/privacy/<site>.jsonl`, deviation maps), so a
manifest could otherwise write anywhere (`../../evil`, `/etc/x`, `a/b`). An id is 1 to 128
characters from `A-Z a-z 0-9 . _ -`, starting with a letter or digit (so never `.`, `..` or a
hidden file), with no spaces anywhere (` s1 ` and `s1` would be two subjects that look alike).
Two ids that differ only in case are refused as duplicates by the manifest: they would share one
file on a case-insensitive disk (macOS, Windows).
"""

from __future__ import annotations

import re
from pathlib import Path

from ndae.errors import ManifestError

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_ID = re.compile(ID_PATTERN)
ID_RULE = "1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"


def id_problem(value: object) -> str | None:
    """Why `value` is not a valid id, or None when it is."""
    if not isinstance(value, str) or value == "":
        return "is empty"
    if value != value.strip():
        return f"{value!r} has leading or trailing spaces"
    if not _ID.fullmatch(value):
        return f"{value!r} is not a valid id ({ID_RULE})"
    return None


def subject_file(folder: str | Path, subject: str, suffix: str) -> Path:
    """`folder/<subject><suffix>`, refused unless the id is valid and the result stays in `folder`."""
    problem = id_problem(subject)
    if problem:
        raise ManifestError(f"subject id {problem}: it cannot name a file in {folder}")
    folder = Path(folder)
    path = folder / f"{subject}{suffix}"
    # The pattern already forbids separators; the resolved check also covers an odd suffix.
    if path.resolve().parent != folder.resolve():
        raise ManifestError(f"subject id {subject!r} with suffix {suffix!r} would name a file outside {folder}")
    return path
