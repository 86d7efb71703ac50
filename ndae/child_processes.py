"""Child processes that die with the process that started them, even when it is killed by SIGKILL.

Flower's simulation detaches part of its tree (`flower-superexec` runs in a session of its own,
Ray's `raylet`/`gcs_server` below it), so neither the SuperLink's death nor a signal to its process
group reaches everything. `spawn_guarded` therefore starts the command under a small guard process
(`python -m ndae.child_processes`) which

- gets SIGTERM when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`, `die_with_parent`),
- is a child subreaper (`PR_SET_CHILD_SUBREAPER`): every process its command detaches is
  re-parented to the guard instead of init, so the guard can always find it in /proc,
- on SIGTERM/SIGINT/SIGHUP, or when the command exits, stops every descendant (SIGTERM, then
  SIGKILL after a grace period), removes the folders it was asked to remove (the private
  FLWR_HOME), and exits with the command's code.

Elsewhere than Linux the guard still stops what it can find, but a SIGKILLed parent is not noticed.

Worker pools (`worker_pool`) follow the same rule without a guard: each worker is started fresh
(spawn, not fork, so it inherits no open descriptor: not a run folder's lock, not a cache lock),
arms the parent-death signal first thing, ignores the terminal's SIGINT (its parent decides), and
an exception or signal in the parent stops every worker before it propagates, instead of waiting
for the queued work as `ProcessPoolExecutor.__exit__` does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent() -> None:
    """In the child before exec (a `preexec_fn`): get SIGTERM if the process that started us
    dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG), so an interrupted run leaves nothing."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def preexec() -> object:
    """The `preexec_fn` to pass to subprocess where the platform supports it (else None)."""
    return die_with_parent if sys.platform == "linux" else None


def descendants(pid: int) -> list[int]:
    """Descendants of `pid` (Linux /proc); empty where /proc is unavailable."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes (its parent has not reaped it yet)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_pids(pids, timeout: float) -> None:
    """SIGTERM each PID, wait up to `timeout` for all, SIGKILL the rest."""
    pids = [pid for pid in pids if alive(pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _worker_start(parent: int) -> None:
    """Initializer of every `worker_pool` worker: die with the parent, leave Ctrl-C to it."""
    if sys.platform == "linux":
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a stuck worker must not outlive a SIGKILLed run
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)


@contextmanager
def worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers never outlive this process (see the module docstring).

    On leaving normally it waits for the submitted work; on any exception (KeyboardInterrupt and
    the SystemExit of a SIGTERM included) it cancels what is queued and stops every worker first."""
    import multiprocessing

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_start, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def stop_pool(pool: ProcessPoolExecutor, grace: float = 2.0) -> None:
    """Cancel queued work and stop the pool's workers now (SIGTERM, then SIGKILL after `grace`)."""
    workers = list((getattr(pool, "_processes", None) or {}).values())  # taken before shutdown clears it
    pool.shutdown(wait=False, cancel_futures=True)
    stop_pids([worker.pid for worker in workers if worker.pid], grace)
    for worker in workers:
        worker.join(timeout=grace)


def terminate_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Turn SIGTERM/SIGHUP into `SystemExit(128 + signum)` in the main thread, as Ctrl-C already is
    a KeyboardInterrupt: `finally` blocks and context managers run (worker pools stopped, run
    folders marked interrupted, locks released) instead of the process vanishing mid-write."""
    def on_signal(signum, frame):
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
        raise SystemExit(128 + signum)

    for signum in signals:
        signal.signal(signum, on_signal)


def spawn_guarded(command: Sequence[str], *, remove: Sequence[str | os.PathLike] = (), grace: float = 10.0,
                  **popen_kwargs) -> subprocess.Popen:
    """Start `command` under a guard (see the module docstring); returns the guard's Popen.

    The guard runs in a new session, so `os.killpg(popen.pid, ...)` or `popen.terminate()`
    stops the whole tree; folders in `remove` are deleted once the tree is gone."""
    guard = [sys.executable, "-m", "ndae.child_processes", "--parent", str(os.getpid()), "--grace", str(grace)]
    for folder in remove:
        guard += ["--remove", str(folder)]
    popen_kwargs.setdefault("start_new_session", True)
    return subprocess.Popen([*guard, "--", *command], preexec_fn=preexec(), **popen_kwargs)


def _guard(parent: int, command: list[str], remove: list[str], grace: float) -> int:
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    stop = {"signal": 0}

    def on_signal(signum, frame):
        stop["signal"] = signum

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    child = None
    if os.getppid() == parent:  # else the parent died before the death signal was armed
        child = subprocess.Popen(command)
    code = 1
    while child is not None and not stop["signal"] and os.getppid() == parent:
        try:
            code = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    # The command has ended or must end: stop it first (it may stop its own tree cleanly), then
    # whatever is left below us, detached processes included (they were re-parented to us).
    if child is not None and child.poll() is None:
        stop_pids([child.pid], grace)
        code = child.returncode if child.poll() is not None else -signal.SIGKILL
    for _ in range(3):  # processes may fork while being stopped
        left = descendants(os.getpid())
        if not left:
            break
        stop_pids(left, min(grace, 5.0))
        _reap()
    for folder in remove:
        shutil.rmtree(folder, ignore_errors=True)
    return code if code >= 0 else 128 - code


def _reap() -> None:
    """Collect exit statuses of re-parented orphans (we are their subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ndae.child_processes",
                                     description="Run a command; stop its whole tree when it ends or we die.")
    parser.add_argument("--parent", type=int, required=True, help="PID whose death stops the command")
    parser.add_argument("--remove", action="append", default=[], help="folder to delete at the end")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    return _guard(args.parent, command, args.remove, args.grace)


if __name__ == "__main__":
    sys.exit(main())
