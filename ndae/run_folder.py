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
   it `finished`, a failure or a signal `failed` / `interrupted`.

Whether a run is live comes from the lock alone, never from a file: a record that still says
`running` (its process was killed by SIGKILL) while the lock is free belongs to an interrupted
run. Such a run never blocks: `--resume` continues it, and a command that asks for it
(`continue_interrupted`, `ndae demo`) continues it without a flag when the settings are the same.
`--resume` on a finished run says it is finished and does nothing. A lock held only by the
leftover children of a dead holder (the PID it names is gone) is broken, not obeyed. The root of
the file system and the home folder are refused as output folders.

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


class RunAlreadyFinished(RunFolderError):
    """`--resume` on a run that finished: nothing to do (the CLI says so and exits 0)."""


# Record states of a run that stopped before finishing (the lock, not the state, says nothing runs it).
STOPPED_STATES = ("running", "interrupted", "failed")


@dataclass
class RunClaim:
    folder: Path
    command: str
    settings: dict
    resumed: bool = False
    record_name: str = RECORD_NAME
    outputs: tuple = ()
    created: bool = False  # the claim made the folder: a failure before any output removes it again
    continued: bool = False  # an interrupted run continued without --resume (continue_interrupted)
    status_files: tuple = ()  # JSON files whose "status" "running" is set to how the run stopped
    _lock_fd: int | None = field(default=None, repr=False)

    @property
    def record_path(self) -> Path:
        return self.folder / self.record_name

    def finish(self) -> None:
        atomic_write_json(self.record_path, {"command": self.command, "settings": self.settings,
                                             "state": "finished"})

    def abandon(self, state: str = "failed") -> None:
        """The command failed (`state` failed) or was stopped (interrupted): if it wrote none of
        its outputs, forget the run (a corrected rerun then needs no flag); else the record (and
        each status file that says "running") says how it stopped."""
        if not _present(self.folder, self.outputs):
            self.record_path.unlink(missing_ok=True)
            if self.created and {p.name for p in self.folder.iterdir()} <= {LOCK_NAME}:
                (self.folder / LOCK_NAME).unlink(missing_ok=True)
                self.folder.rmdir()
            return
        atomic_write_json(self.record_path, {"command": self.command, "settings": self.settings, "state": state})
        for name in self.status_files:
            path = self.folder / name
            try:
                status = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(status, dict) and status.get("status") == "running":
                atomic_write_json(path, {**status, "status": state})

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> "RunClaim":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                stopped = issubclass(exc_type, (KeyboardInterrupt, SystemExit))
                try:
                    self.abandon("interrupted" if stopped else "failed")
                except OSError:
                    pass  # a full or read-only disk: the original error is the one to report
        finally:
            self.release()


def lock_folder(folder: Path, command: str) -> int:
    """Take the folder's lock (non-blocking) or raise RunFolderError naming the holder.

    The descriptor is close-on-exec and `ndae.child_processes.worker_pool` starts its workers
    fresh, so no child holds the lock; a lock still held while the PID it names is gone is held
    by the leftovers of a dead run (children that inherited it), and is broken: the lock file is
    replaced and the new one locked."""
    import fcntl

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"{folder}: cannot create the folder ({error.strerror}); choose another output") from None
    path = folder / LOCK_NAME
    for _ in range(5):
        try:
            # never inherited by children; never through a symlink (its target would be truncated)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            if os.path.islink(path):
                raise RunFolderError(f"{folder}: its lock file {path} is a symbolic link; remove it (nothing was "
                                     "written)") from None
            raise RunFolderError(f"{folder}: cannot write here ({error.strerror}); choose a writable output "
                                 "folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace")
            if _holder_is_gone(holder) and not _taken_since(fd, holder) and _same_file(fd, path):
                os.close(fd)
                path.unlink(missing_ok=True)  # the orphans keep their old file; this run locks a new one
                continue
            os.close(fd)
            named = holder.strip().splitlines()[0] if holder.strip() else "another process"
            raise RunFolderError(f"{folder}: in use by {named}; wait for it to finish (or stop it), or choose "
                                 "another output folder") from None
        if not _same_file(fd, path):  # another process replaced a stale lock file meanwhile: take the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} (ndae {command})\nstarted {_start_time(os.getpid())}\n".encode(), 0)
        return fd
    raise RunFolderError(f"{folder}: its lock file {path} keeps changing; is another process breaking it?")


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc; "" elsewhere): with the
    PID it tells the holder from an unrelated process that got the same PID later."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _holder_is_gone(holder: str) -> bool:
    """True when the lock file names a process that no longer exists (or exists as another
    process with the same PID); False when unsure (an unreadable record, no /proc)."""
    import re

    from ndae.child_processes import alive

    found = re.match(r"pid (\d+) ", holder)
    if not found:
        return False
    pid = int(found.group(1))
    if not alive(pid):
        return True
    started = re.search(r"^started (\d+)$", holder, re.MULTILINE)
    now = _start_time(pid)
    return bool(started and now and now != started.group(1))


def _taken_since(fd: int, holder: str) -> bool:
    """Whether a live process other than the one the record names holds the lock: a new holder,
    between its flock and writing its own record, leaves the dead run's record in the file; that
    lock is live. Leftover children of the dead holder show in /proc/locks as the PID the record
    names (the flock belongs to the open file that PID locked). False where /proc/locks cannot tell."""
    import re

    from ndae.child_processes import alive

    named = re.match(r"pid (\d+) ", holder)
    try:
        info = os.fstat(fd)
        table = Path("/proc/locks").read_text()
    except OSError:
        return False
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        if "FLOCK" in fields and where in fields and "->" not in fields:  # "->": a waiter, not a holder
            pid = fields[fields.index(where) - 1]
            if pid.isdigit() and int(pid) > 0 and (not named or int(pid) != int(named.group(1))) and alive(int(pid)):
                return True
    return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _refuse_unsafe_folder(folder: Path, flag: str) -> None:
    """The file system's root and the home folder are never an output folder (a --force there
    would delete whatever happens to carry an output's name)."""
    for unsafe, what in ((Path(folder.anchor or "/"), "the root of the file system"),
                         (Path.home().expanduser().resolve(), "your home folder")):
        if folder == unsafe:
            raise RunFolderError(f"{folder}: is {what}; {flag} needs an output folder of its own "
                                 f"(e.g. {folder / 'ndae-run'})")


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
                 record_name: str = RECORD_NAME, continue_interrupted: bool = False,
                 foreign_files: bool = True, status_files: Sequence[str] = (),
                 resume_finished: bool = False, refuse_unsafe: bool = True) -> RunClaim:
    """Lock `folder` and apply the rerun rule (module docstring); nothing is written on refusal
    except the lock file. `outputs`: names or glob patterns (relative to `folder`) the command writes.
    `continue_interrupted`: an interrupted run with the same settings is continued without
    --resume. `foreign_files=False`: an existing folder holding other files and no run is refused
    (nothing is written into it). `status_files`: JSON files marked stopped with the record.
    `resume_finished`: --resume may continue a finished run (`ndae train` to more steps); else
    it raises RunAlreadyFinished. `refuse_unsafe`: refuse / and $HOME (not for one output file).

    Use it as a context manager around the work: on an exception the record is dropped if no
    output was written; call `finish()` at the end of a successful run."""
    folder = Path(folder).expanduser().resolve()
    flag = f"`ndae {command}`"
    if refuse_unsafe:
        _refuse_unsafe_folder(folder, flag)
    if resume and force:
        raise RunFolderError(f"{flag}: --resume (continue) and --force (start over) exclude each other")
    if resume and not can_resume:
        raise RunFolderError(f"{flag} cannot continue a previous run: it has no --resume (use --force)")
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{folder}: exists and is not a folder")
    if not foreign_files and folder.is_dir() and not (folder / record_name).exists() \
            and not _present(folder, outputs):
        others = sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)
        if others:
            raise RunFolderError(f"{folder}: holds other files ({', '.join(others[:4])}"
                                 f"{', ...' if len(others) > 4 else ''}) and no run of {flag}; nothing was "
                                 "changed. Choose a new or empty output folder")
    settings = json.loads(json.dumps(dict(settings), default=str))  # what the record will hold
    created = not folder.exists()
    fd = lock_folder(folder, command)
    continued = False
    try:
        record = _read_record(folder / record_name)
        present = _present(folder, outputs)
        # We hold the lock, so nothing runs this run: a record not "finished" is an interrupted run.
        stopped = record is not None and record.get("state") in STOPPED_STATES
        if record is None and not present:
            if resume:
                raise RunFolderError(f"{folder}: there is no run to resume; drop --resume")
        elif force:
            for name in [*present, record_name]:
                _remove(folder / name)
            record = None
        elif (continue_interrupted and not resume and stopped and record.get("command") == command
              and not _differences(record.get("settings") or {}, settings)):
            resume = continued = True
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
            if record.get("state") == "finished" and not resume_finished:
                raise RunAlreadyFinished(f"{folder}: its run of {flag} has finished; nothing to resume (pass "
                                         "--force to run it again)")
        else:
            state = ("an interrupted" if stopped else f"a {record.get('state', 'previous')}") if record else ""
            what = (f"{state} run of `ndae {record.get('command')}`"
                    + (" (it stopped before finishing; nothing runs it now)" if stopped else "") if record
                    else f"earlier output ({', '.join(present[:4])})")
            changed = _differences(record.get("settings") or {}, settings) if record else []
            hint = f" (this call differs: {'; '.join(changed)})" if changed else ""
            finished = record is not None and record.get("state") == "finished" and not resume_finished
            options = ("--resume to continue it with the same settings, or --force" if can_resume and not finished
                       else "--force")
            raise RunFolderError(f"{folder}: already holds {what}{hint}; nothing was changed. Pass {options} to "
                                 "start over (deletes its outputs), or choose another output")
        claim = RunClaim(folder, command, settings, resumed=resume, record_name=record_name, outputs=tuple(outputs),
                         created=created, continued=continued, status_files=tuple(status_files), _lock_fd=fd)
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
                        can_resume=False, record_name=f".{path.name}.{RECORD_NAME}", refuse_unsafe=False)


def add_rerun_flags(parser, *, can_resume: bool = True) -> None:
    """The same flags, with the same words, on every command that writes a run."""
    if can_resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run already in the output folder (same settings required)")
    parser.add_argument("--force", action="store_true",
                        help="start over: delete what an earlier run wrote to the output first")


