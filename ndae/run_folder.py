"""One rule for every command that writes a run folder (or an output file): claim it first.

`claim_output(path, command=..., settings=..., outputs=..., resume=..., force=...)` is called
before anything is written and

1. locks the folder (`fcntl.flock` on `<folder>/.ndae.lock`): a folder held by a live process is
   refused to a second one; the kernel releases the lock when the holder dies, kill -9 included;
2. applies the rerun rule: an output that already holds a run (this command's record
   `ndae-run.json`, or any of the command's output files) is refused unless
   - `--resume`: continue the same run; the settings must be those the run was started with
     (only commands that can continue offer it), or
   - `--force`: start over; the command's previous outputs are deleted first (other files in the
     folder are left alone);
3. records the command and its settings in `ndae-run.json` (state `running`); `finish()` marks
   it `finished`.

The refusal names the folder, what it holds, the settings that differ and the flag to pass.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ndae.errors import NdaeError
from ndae.io import atomic_write_json

LOCK_NAME = ".ndae.lock"
RECORD_NAME = "ndae-run.json"


class RunFolderError(NdaeError):
    """A run folder that is in use, or holds a run this call would overwrite."""


@dataclass
class RunClaim:
    folder: Path
    command: str
    settings: dict
    resumed: bool = False
    record_name: str = RECORD_NAME
    outputs: tuple = ()
    created: bool = False  # the claim made the folder: a failure before any output removes it again
    _lock_fd: int | None = field(default=None, repr=False)

    @property
    def record_path(self) -> Path:
        return self.folder / self.record_name

    def finish(self) -> None:
        atomic_write_json(self.record_path, {"command": self.command, "settings": self.settings,
                                             "state": "finished"})

    def abandon(self) -> None:
        """The command failed: if it wrote none of its outputs, forget the run (a corrected
        rerun then needs no flag); else the record stays and says the run did not finish."""
        if not _present(self.folder, self.outputs):
            self.record_path.unlink(missing_ok=True)
            if self.created and {p.name for p in self.folder.iterdir()} <= {LOCK_NAME}:
                (self.folder / LOCK_NAME).unlink(missing_ok=True)
                self.folder.rmdir()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> "RunClaim":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self.abandon()
        finally:
            self.release()


def lock_folder(folder: Path, command: str) -> int:
    """Take the folder's lock (non-blocking) or raise RunFolderError naming the holder."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # never inherited by children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunFolderError(f"{folder}: in use by {holder}; wait for it to finish (or stop it), or choose "
                             "another output folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} (ndae {command})\n".encode(), 0)
    return fd


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{key} {old.get(key)!r} → {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path}: unreadable run record ({error}); pass --force to start over") from None
    return record if isinstance(record, dict) else None


def _present(folder: Path, outputs: Sequence[str]) -> list[str]:
    """The outputs (names or glob patterns relative to `folder`) that exist."""
    return sorted({str(p.relative_to(folder)) for pattern in outputs for p in folder.glob(pattern)})


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def claim_output(folder: str | Path, *, command: str, settings: Mapping[str, Any], outputs: Sequence[str],
                 resume: bool = False, force: bool = False, can_resume: bool = True,
                 record_name: str = RECORD_NAME) -> RunClaim:
    """Lock `folder` and apply the rerun rule (module docstring); nothing is written on refusal
    except the lock file. `outputs`: names or glob patterns (relative to `folder`) the command writes.

    Use it as a context manager around the work: on an exception the record is dropped if no
    output was written; call `finish()` at the end of a successful run."""
    folder = Path(folder).expanduser().resolve()
    flag = f"`ndae {command}`"
    if resume and force:
        raise RunFolderError(f"{flag}: --resume (continue) and --force (start over) exclude each other")
    if resume and not can_resume:
        raise RunFolderError(f"{flag} cannot continue a previous run: it has no --resume (use --force)")
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{folder}: exists and is not a folder")
    settings = json.loads(json.dumps(dict(settings), default=str))  # what the record will hold
    created = not folder.exists()
    fd = lock_folder(folder, command)
    try:
        record = _read_record(folder / record_name)
        present = _present(folder, outputs)
        if record is None and not present:
            if resume:
                raise RunFolderError(f"{folder}: there is no run to resume; drop --resume")
        elif force:
            for name in [*present, record_name]:
                _remove(folder / name)
            record = None
        elif resume:
            if record is None:
                raise RunFolderError(f"{folder}: holds {', '.join(present)} but no run record ({record_name}) "
                                     "saying how it was made, so it cannot be resumed safely; pass --force to start over")
            if record.get("command") != command:
                raise RunFolderError(f"{folder}: holds a run of `ndae {record.get('command')}`, not of {flag}; "
                                     "choose another folder or pass --force")
            changed = _differences(record.get("settings") or {}, settings)
            if changed:
                raise RunFolderError(f"{folder}: --resume continues the same run, but this call differs from it: "
                                     f"{'; '.join(changed)}. Use the run's settings, or --force to start over")
        else:
            what = (f"a {record.get('state', 'previous')} run of `ndae {record.get('command')}`" if record
                    else f"earlier output ({', '.join(present[:4])})")
            changed = _differences(record.get("settings") or {}, settings) if record else []
            hint = f" (this call differs: {'; '.join(changed)})" if changed else ""
            options = "--resume to continue it with the same settings, or --force" if can_resume else "--force"
            raise RunFolderError(f"{folder}: already holds {what}{hint}; nothing was changed. Pass {options} to "
                                 "start over (deletes its outputs), or choose another output")
        claim = RunClaim(folder, command, settings, resumed=resume, record_name=record_name, outputs=tuple(outputs),
                         created=created, _lock_fd=fd)
        atomic_write_json(claim.record_path, {"command": command, "settings": settings, "state": "running"})
        return claim
    except BaseException:
        os.close(fd)
        raise


def claim_file(path: str | Path, *, command: str, settings: Mapping[str, Any], force: bool = False) -> RunClaim:
    """The rule for a command whose output is one file (`ndae deviations --out FILE.csv`): its
    folder is locked, an existing file is refused unless --force; the record is `<file>.ndae-run.json`."""
    path = Path(path).expanduser().resolve()
    return claim_output(path.parent, command=command, settings=settings, outputs=[path.name], force=force,
                        can_resume=False, record_name=f".{path.name}.{RECORD_NAME}")


def add_rerun_flags(parser, *, can_resume: bool = True) -> None:
    """The same flags, with the same words, on every command that writes a run."""
    if can_resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run already in the output folder (same settings required)")
    parser.add_argument("--force", action="store_true",
                        help="start over: delete what an earlier run wrote to the output first")


