"""A run folder's lock and the processes behind it: every worker of a killed command dies with it
(SIGKILL, SIGTERM, SIGINT), no child holds the lock, a lock held only by a dead run's leftovers
does not block, two `ndae cohort` runs never share a folder, and whether a run is live comes from
the lock: a killed run is interrupted (and continued), a finished one says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ndae.child_processes import alive, descendants
from ndae.cli import main
from ndae.run_folder import LOCK_NAME, RECORD_NAME, RunFolderError, claim_output
from tests.test_cohort_generate import _healthy_manifest


class WorkStarted(Exception):
    """A refused call must never reach the cohort simulation."""


def _wait_gone(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], **kwargs)


@pytest.fixture(scope="module")
def healthy(ixi_dir, tmp_path_factory):
    return _healthy_manifest(ixi_dir, tmp_path_factory.mktemp("healthy"), 4)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["KILL", "TERM", "INT"])
def test_a_killed_cohort_takes_its_workers_with_it_frees_its_folder_and_held_it_against_a_second(
        healthy, tmp_path, capsys, monkeypatch, signum):
    out = tmp_path / "cohort"
    # Enough work (4 anatomies x 40 patients) that the workers are busy when the signal comes.
    first = subprocess.Popen([sys.executable, "-m", "ndae.cli", "cohort", "--healthy", str(healthy), "--out", str(out),
                              "--sites", "1", "--patients", "2", "--patients-per-anatomy", "40", "--jobs", "2",
                              "--no-figure"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tree: set[int] = set()
    try:
        _kill_and_check(first, out, tree, healthy, capsys, monkeypatch, signum)
    finally:  # a failing run must not leave its workers behind either
        for pid in tree | {first.pid}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        first.wait()


def _kill_and_check(first, out, tree, healthy, capsys, monkeypatch, signum):
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (len(tree) >= 2 and any((out / "images").rglob("*.nii.gz"))):
        assert first.poll() is None, first.stderr.read()
        tree |= set(descendants(first.pid))
        time.sleep(0.1)
    assert len(tree) >= 2 and any((out / "images").rglob("*.nii.gz")), "the workers never started rendering"

    # A second cohort into the same folder, started now, is refused before it simulates anything.
    import ndae.cohort

    def started(*args, **kwargs):
        raise WorkStarted

    monkeypatch.setattr(ndae.cohort, "generate_cohort", started)
    assert main(["cohort", "--healthy", str(healthy), "--out", str(out), "--seed", "1", "--force"]) == 1
    assert f"in use by pid {first.pid} (ndae cohort)" in capsys.readouterr().err

    tree |= set(descendants(first.pid))
    os.kill(first.pid, signum)
    first.wait(timeout=20)  # Ctrl-C once waited for every queued subject
    assert _wait_gone(tree, 15) == [], "workers outlived the killed command"
    assert "Traceback" not in first.stderr.read()
    claim_output(out, command="cohort", settings={}, outputs=["images"], force=True).release()  # the lock is free


def test_a_lock_held_only_by_the_leftover_child_of_a_dead_run_does_not_block(tmp_path):
    run = tmp_path / "run"
    # As a forked worker did: the child inherits the lock's open file and outlives its parent.
    parent = _python(f"""
        import os, sys, time
        from ndae.run_folder import claim_output
        claim = claim_output({str(run)!r}, command="demo", settings={{}}, outputs=["status.json"])
        child = os.fork()
        if child == 0:
            os.set_inheritable(claim._lock_fd, True)
            time.sleep(120)
            os._exit(0)
        print(child, flush=True)
        time.sleep(120)
    """, stdout=subprocess.PIPE, text=True)
    orphan = int(parent.stdout.readline())
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert alive(orphan)
        started = time.monotonic()
        claim = claim_output(run, command="demo", settings={}, outputs=["status.json"], resume=True)  # not "in use"
        assert time.monotonic() - started < 1
        assert (run / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} (ndae demo)")
        # And the new lock is a real one: a third process is refused while this claim holds it.
        with pytest.raises(RunFolderError, match=f"in use by pid {os.getpid()}"):
            claim_output(run, command="demo", settings={}, outputs=["status.json"], resume=True)
        claim.release()
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_a_run_stopped_by_sigterm_is_recorded_interrupted_and_is_continued_not_refused(tmp_path):
    from ndae.federation.demo import DEMO_OUTPUTS

    run = tmp_path / "run"
    settings = {"rounds": 1, "seed": 0}
    # The demo's claim, its server's status.json "running", then SIGTERM (as `kill PID` sends).
    holder = _python(f"""
        import json, time
        from ndae.cli import _signals_end_the_command
        from ndae.run_folder import claim_output
        with _signals_end_the_command():
            with claim_output({str(run)!r}, command="demo", settings={settings!r}, outputs={DEMO_OUTPUTS!r},
                              continue_interrupted=True, foreign_files=False, status_files=("status.json",)):
                (claim_dir := __import__("pathlib").Path({str(run)!r}))
                (claim_dir / "status.json").write_text(json.dumps({{"status": "running", "round": 1}}))
                print("running", flush=True)
                time.sleep(120)
    """, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "running"
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(timeout=10) == 128 + signal.SIGTERM
    assert json.loads((run / RECORD_NAME).read_text())["state"] == "interrupted"
    assert json.loads((run / "status.json").read_text()) == {"status": "interrupted", "round": 1}

    # Nothing runs it (the lock is free): the next demo with the same settings continues it ...
    with claim_output(run, command="demo", settings=settings, outputs=DEMO_OUTPUTS, continue_interrupted=True,
                      foreign_files=False) as claim:
        assert claim.continued and claim.resumed
    # ... a changed one is refused naming the run as interrupted, not "running".
    with pytest.raises(RunFolderError, match="an interrupted run of `ndae demo` .*nothing runs it now"):
        claim_output(run, command="demo", settings={**settings, "seed": 1}, outputs=DEMO_OUTPUTS,
                     continue_interrupted=True)


def test_demo_resume_of_a_finished_run_says_it_is_finished_and_does_nothing(tmp_path, capsys, monkeypatch):
    import ndae.cohort
    from ndae.federation.demo import DEMO_OUTPUTS, demo_settings

    run = tmp_path / "demo"
    with claim_output(run, command="demo", settings=demo_settings(rounds=1), outputs=DEMO_OUTPUTS) as claim:
        (run / "report.md").write_text("# the report\n")
        claim.finish()
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def started(*args, **kwargs):
        raise WorkStarted

    monkeypatch.setattr(ndae.cohort, "generate_cohort", started)
    assert main(["demo", "--out", str(run), "--rounds", "1", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "has finished; nothing to resume" in printed and f"report: {run / 'report.md'}" in printed
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
