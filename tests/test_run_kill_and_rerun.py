"""Killed runs and reruns: children die with the parent, a run folder is locked,
one rerun rule (refuse unless --resume / --force, before anything is written), `ndae demo`
arguments checked before the cohort, and a site's refusal printed as the site's reason (the job fails)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ndae.federation.demo  # noqa: F401  (imported here, so timings below measure the checks, not imports)
from ndae.child_processes import alive, descendants
from ndae.cli import main
from ndae.errors import NdaeError
from ndae.run_folder import RunAlreadyFinished, RunFolderError, claim_output


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_gone(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], **kwargs)


# --- children die with the parent ------------------------------------------------------------

def test_a_killed_parent_takes_its_guarded_tree_with_it_detached_grandchildren_included(tmp_path):
    marker = tmp_path / "marker"
    home = tmp_path / "home"
    home.mkdir()
    # The grandchild leaves the session (as flower-superexec does): no process-group signal reaches it.
    parent = _python(f"""
        import subprocess, time
        from ndae.child_processes import spawn_guarded
        spawn_guarded(["bash", "-c", "setsid sleep 300 & sleep 300"], remove=[{str(home)!r}])
        open({str(marker)!r}, "w").close()
        time.sleep(300)
    """)
    deadline = time.monotonic() + 30
    tree: set[int] = set()
    while time.monotonic() < deadline and sum(_cmdline(p).startswith("sleep 300") for p in tree) < 2:
        tree |= set(descendants(parent.pid))
        time.sleep(0.1)
    sleepers = [p for p in tree if _cmdline(p).startswith("sleep 300")]
    assert len(sleepers) == 2 and marker.exists()
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert _wait_gone(tree, 15) == []
    assert not home.exists()  # the guard removed the folder it was given (FLWR_HOME)


@pytest.mark.slow
def test_sigkill_of_a_simulated_run_stops_superlink_simulation_and_ray_and_frees_the_run_folder(tmp_path):
    from ndae.federation.config import FederationConfig
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    make_synthetic_cohort(tmp_path / "cohort", sites=2, controls_per_site=3, patients_per_site=3, seed=4)
    run = tmp_path / "run"
    config = FederationConfig(run_dir=str(run), cohort_dir=str(tmp_path / "cohort"), cache_dir=str(tmp_path / "cache"),
                              rounds=3, min_sites=2)
    # The parent claims the run folder as `ndae demo` does, then runs the Flower simulation.
    parent = _python(f"""
        from ndae.run_folder import claim_output
        from ndae.federation.simulation import run_simulation
        claim = claim_output({str(run)!r}, command="demo", settings={{}}, outputs=["status.json", "logs"])
        run_simulation({config.to_run_config()!r}, 2)
    """)
    tree: set[int] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any("raylet" in _cmdline(p) for p in tree):
        assert parent.poll() is None, "the simulation ended before Ray started"
        tree |= set(descendants(parent.pid))
        time.sleep(0.3)
    names = " ".join(_cmdline(p) for p in tree)
    assert "flower-superlink" in names and "flower-superexec" in names and "flwr-simulation" in names
    guards = [_cmdline(p).split() for p in tree if "ndae.child_processes" in _cmdline(p)]
    homes = {argv[argv.index("--remove") + 1] for argv in guards if "--remove" in argv}
    assert len(homes) == 1  # the SuperLink's guard deletes its private FLWR_HOME
    home = Path(homes.pop())
    assert home.is_dir()

    # While it runs, a second process is refused the folder, within a second, naming the holder.
    started = time.monotonic()
    with pytest.raises(RunFolderError, match=rf"{run}: in use by pid {parent.pid} \(ndae demo\)"):
        claim_output(run, command="demo", settings={}, outputs=["status.json"], force=True)
    assert time.monotonic() - started < 1

    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    left = _wait_gone(tree, 45)
    assert left == [], [_cmdline(p) for p in left]
    assert not home.exists()
    # The kernel dropped the lock with the process: the folder is free (only the rerun rule applies),
    # and the run it left is called what it is: interrupted, not running.
    with pytest.raises(RunFolderError, match="already holds an interrupted run"):
        claim_output(run, command="demo", settings={}, outputs=["status.json", "logs"])


# --- the lock ---------------------------------------------------------------------------------

def test_a_run_folder_held_by_a_live_process_is_refused_until_it_is_killed(tmp_path):
    run = tmp_path / "run"
    holder = _python(f"""
        import sys, time
        from ndae.run_folder import claim_output
        claim_output({str(run)!r}, command="train", settings={{}}, outputs=["dae"])
        print("held", flush=True)
        time.sleep(300)
    """, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderError, match=rf"in use by pid {holder.pid} \(ndae train\)"):
        claim_output(run, command="train", settings={}, outputs=["dae"], resume=True)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    claim = claim_output(run, command="train", settings={}, outputs=["dae"], resume=True)  # same settings
    claim.release()


# --- the rerun rule ---------------------------------------------------------------------------

def _finished_run(folder: Path, settings: dict, command: str = "demo") -> dict[str, bytes]:
    with claim_output(folder, command=command, settings=settings, outputs=["config.json", "status.json"]) as claim:
        (folder / "config.json").write_text(json.dumps({"rounds": settings.get("rounds")}))
        (folder / "status.json").write_text('{"status": "completed"}')
        claim.finish()
    return {name: (folder / name).read_bytes() for name in ("config.json", "status.json", "ndae-run.json")}


def _unchanged(folder: Path, before: dict[str, bytes]) -> bool:
    return all((folder / name).read_bytes() == data for name, data in before.items())


def test_rerun_rule_refuses_without_a_flag_and_resume_requires_the_same_settings(tmp_path):
    run = tmp_path / "run"
    before = _finished_run(run, {"rounds": 2, "seed": 0})
    for kwargs in ({}, {"resume": True}):
        with pytest.raises(RunFolderError) as refused:
            claim_output(run, command="demo", settings={"rounds": 1, "seed": 0}, outputs=["config.json"], **kwargs)
        assert "rounds 2 → 1" in str(refused.value) and str(run) in str(refused.value)
        assert _unchanged(run, before)
    # A finished run cannot be continued: only --force is offered (--resume would say it is finished).
    with pytest.raises(RunFolderError, match="already holds a finished run .*Pass --force to start over"):
        claim_output(run, command="demo", settings={"rounds": 2, "seed": 0}, outputs=["config.json"])
    with pytest.raises(RunFolderError, match="exclude each other"):
        claim_output(run, command="demo", settings={}, outputs=[], resume=True, force=True)
    assert _unchanged(run, before)
    # The run finished: --resume with its settings says so and changes nothing (it re-ran its last phases).
    with pytest.raises(RunAlreadyFinished, match="has finished; nothing to resume"):
        claim_output(run, command="demo", settings={"rounds": 2, "seed": 0}, outputs=["config.json"], resume=True)
    assert _unchanged(run, before)
    claim_output(run, command="demo", settings={"rounds": 2, "seed": 0}, outputs=["config.json"], resume=True,
                 resume_finished=True).release()  # `ndae train --resume` trains a finished run further


def test_force_deletes_only_the_commands_outputs_and_a_failure_before_any_output_leaves_no_run(tmp_path):
    run = tmp_path / "run"
    _finished_run(run, {"seed": 0})
    (run / "notes.txt").write_text("mine")
    with claim_output(run, command="demo", settings={"seed": 1}, outputs=["config.json", "status.json"],
                      force=True) as claim:
        assert not (run / "config.json").exists() and not (run / "status.json").exists()
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads(claim.record_path.read_text())["settings"] == {"seed": 1}

    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError):
        with claim_output(fresh, command="train", settings={}, outputs=["dae"]):
            raise ValueError("bad input, found before anything was written")
    claim_output(fresh, command="train", settings={"other": 1}, outputs=["dae"]).release()  # no flag needed


def test_demo_rerun_with_another_seed_or_fewer_rounds_is_refused_before_anything_is_written(tmp_path, capsys):
    from ndae.federation.demo import demo_settings

    run = tmp_path / "demo"
    before = _finished_run(run, demo_settings(rounds=2, seed=0))
    for extra, change in ((["--rounds", "2", "--seed", "1"], "seed 0 → 1"), (["--rounds", "1"], "rounds 2 → 1"),
                          (["--rounds", "1", "--resume"], "rounds 2 → 1"), (["--rounds", "2", "--sites", "2"],
                                                                           "sites 3 → 2")):
        started = time.monotonic()
        assert main(["demo", "--out", str(run), *extra]) == 1
        error = capsys.readouterr().err
        assert time.monotonic() - started < 5
        assert f"ndae demo: error: {run}" in error and change in error and "Traceback" not in error
        assert _unchanged(run, before) and not (run / "cohort").exists()


def test_train_into_an_existing_run_without_resume_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "dae").mkdir(parents=True)
    (run / "config.json").write_text('{"dae": {}}')
    (run / "dae" / "checkpoint.pt").write_bytes(b"weights")
    manifest = tmp_path / "missing.csv"  # never read: the rule is checked first
    assert main(["train", "--manifest", str(manifest), "--out", str(run), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert f"{run}: already holds earlier output (config.json, dae)" in error and "--resume" in error
    assert main(["train", "--manifest", str(manifest), "--out", str(run), "--quiet", "--resume"]) == 1
    assert "cannot be resumed safely" in capsys.readouterr().err
    assert (run / "dae" / "checkpoint.pt").read_bytes() == b"weights"


@pytest.mark.parametrize("command,existing", [
    (["normative", "fit", "--latents", "x.npz", "--manifest", "m.csv", "--out", "{out}"], "model.json"),
    (["deviations", "--run", "{out}", "--manifest", "m.csv"], "deviations.csv"),
    (["survival", "--deviations", "d.csv", "--manifest", "m.csv", "--out", "{out}"], "metrics.json"),
    (["evaluate", "--manifest", "m.csv", "--out", "{out}"], "report.md"),
])
def test_every_command_refuses_to_overwrite_an_earlier_output_without_force(tmp_path, capsys, command, existing):
    out = tmp_path / "out"
    out.mkdir()
    (out / existing).write_text("earlier result")
    assert main([part.replace("{out}", str(out)) for part in command]) == 1
    error = capsys.readouterr().err
    assert f"{out}: already holds earlier output ({existing})" in error and "--force" in error
    assert (out / existing).read_text() == "earlier result"
    # With --force the rule lets it through (the command then fails on its missing inputs).
    main([part.replace("{out}", str(out)) for part in command] + ["--force"])
    assert "already holds" not in capsys.readouterr().err


# --- ndae demo arguments, before the cohort ---------------------------------------------------

@pytest.mark.parametrize("args,named", [
    (["--preset", "huge"], "--preset 'huge'"),
    (["--privacy", "--target-epsilon", "0"], "--target-epsilon 0"),
    (["--privacy", "--target-epsilon", "-1"], "--target-epsilon -1"),
    (["--privacy", "--target-epsilon", "nan"], "--target-epsilon nan"),
    (["--sites", "0"], "--sites"),
    (["--rounds", "-1"], "--rounds"),
    (["--local-epochs", "0"], "--local-epochs"),
    (["--max-subjects", "1"], "--max-subjects 1"),
    (["--jobs", "0"], "--jobs"),
    (["--privacy", "--strategy", "fedprox"], "fedprox"),
])
def test_bad_demo_arguments_fail_within_a_second_before_the_cohort(tmp_path, capsys, args, named):
    out = tmp_path / "demo"
    started = time.monotonic()
    assert main(["demo", "--out", str(out), *args]) == 1
    assert time.monotonic() - started < 2.0  # today: an unknown preset failed after 49 s of cohort generation
    error = capsys.readouterr().err
    assert error.startswith("ndae demo: error:") and named in error and "Traceback" not in error
    assert not out.exists()


# --- a site's refusal reaches the CLI as the site's reason -----------------------------------

def test_site_reason_unwraps_ray_and_flower_errors():
    from ndae.federation.site_reasons import site_reason

    ray = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m "
           "(pid=1)\n  File \"x.py\", line 1, in run\n    raise PolicyViolation(...)\n"
           "ndae.federation.site.policy.PolicyViolation: run config 'x' = 3 exceeds the site's 2\n\n"
           "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. Message: "
           "run config 'x' = 3 exceeds the site's 2'>")
    assert site_reason(ray) == "PolicyViolation: run config 'x' = 3 exceeds the site's 2"
    deployed = "<class 'ndae.errors.PrivacyBudgetExceeded'>:<'site s1 refuses:\nbudget spent'>"
    assert site_reason(deployed) == "PrivacyBudgetExceeded: site s1 refuses: budget spent"
    assert site_reason("RuntimeError: injected fault at site 'site2'\nTraceback (most recent call last):\n  ...") == \
        "RuntimeError: injected fault at site 'site2'"


@pytest.fixture(scope="module")
def refused_simulation(tmp_path_factory):
    """One Flower simulation that fails at its first phase: every site refuses the run (more canaries
    than the sites' default policy trains on, max-audit-canaries 256). (the error, the run folder)"""
    from ndae.federation.config import FederationConfig
    from ndae.federation.simulation import run_simulation
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    root = tmp_path_factory.mktemp("refused")
    make_synthetic_cohort(root / "cohort", sites=2, controls_per_site=3, patients_per_site=3, seed=4)
    config = FederationConfig(run_dir=str(root / "run"), cohort_dir=str(root / "cohort"),
                              cache_dir=str(root / "cache"), rounds=1, min_sites=2, audit_canaries=300)
    with pytest.raises(NdaeError) as failed:
        run_simulation(config.to_run_config(), num_sites=2, timeout=300)
    return failed.value, root / "run"


@pytest.mark.slow
def test_a_failed_federated_run_makes_the_job_fail(refused_simulation):
    # A ClientApp that raises is an error reply; with fewer than min-sites answers the ServerApp
    # fails, and so does the job (a ClientApp raising an injected fault through Flower, the run going
    # on without that site: tests/test_federation_flwr.py::test_flwr_run_simulation_end_to_end).
    error, _ = refused_simulation
    assert isinstance(error, NdaeError) and re.search("federated run failed: FederationError", str(error))


@pytest.mark.slow
def test_a_site_refusal_in_the_flower_simulation_is_reported_as_the_sites_reason(refused_simulation):
    error, run = refused_simulation
    message = str(error)
    lines = message.splitlines()
    assert lines[0].startswith("federated run failed: FederationError: phase site_info: 0 site(s) answered")
    refusals = [line for line in lines[1:] if "(site_info): PolicyViolation: run config 'audit-canaries' = 300" in line]
    assert len(refusals) == 2 and all("max-audit-canaries" in line for line in refusals)
    assert "\x1b" not in message and "Traceback" not in message and "ray::" not in message
    status = json.loads((run / "status.json").read_text())
    assert all(entry["reason"].startswith("error: PolicyViolation: ") for entry in status["missing"])
    assert "PolicyViolation: run config 'audit-canaries' = 300" in (run / "report.md").read_text()


def test_resuming_a_demo_killed_while_its_cohort_was_written_simulates_the_cohort_again(tmp_path, monkeypatch):
    import ndae.cohort
    from ndae.federation.demo import demo_settings, run_demo

    run = tmp_path / "demo"
    with claim_output(run, command="demo", settings=demo_settings(rounds=1), outputs=["cohort"]):
        (run / "cohort" / "sites" / "site1").mkdir(parents=True)  # killed before the completion marker
        (run / "cohort" / "sites" / "site1" / "manifest.csv").write_text("subject,site\n")
        (run / "cohort" / "manifest.csv").write_text("subject,site\n")

    class Regenerated(Exception):
        pass

    def generate(healthy, out, config):
        assert not Path(out).exists() and config.sites == 3 and config.seed == 0  # the half-written one is gone
        raise Regenerated

    monkeypatch.setattr(ndae.cohort, "generate_cohort", generate)
    with pytest.raises(Regenerated):
        run_demo(run, rounds=1, resume=True, log=lambda line: None)
