"""Run the federated app with Flower's simulation engine: `flwr run <app> <connection>`.

`flwr run` against the built-in `local` connection starts a detached SuperLink on fixed ports
and leaves it running. Here we start our own simulation-mode SuperLink on free ports, under a
private `FLWR_HOME` (its `config.toml` names that SuperLink), submit the run with `flwr run
--stream`, and stop the SuperLink (and the processes it started) by its process group when the
run ends, whatever happens. Runtime dependency installation is disabled: the simulation uses
the installed project, it never builds a fresh environment.

Both the SuperLink and `flwr run` are started under `ndae.child_processes.spawn_guarded`: if the
caller dies, even by SIGKILL, the SuperLink, the detached `flower-superexec`, `flwr-simulation`
and Ray die with it and the private FLWR_HOME is deleted.

`flwr run` exits 0 even when a ClientApp raised or the ServerApp failed, so success is read
from the run directory's `status.json`, which the ServerApp writes; a failed run's error names
each site that refused and its reason, one clean line each.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from ndae.child_processes import spawn_guarded
from ndae.errors import NdaeError
from ndae.federation.site_reasons import site_reason, strip_ansi

CONNECTION = "ndae-simulation"


def project_root() -> Path:
    """The folder holding the Flower app's pyproject.toml (the repository root)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.exists() or "[tool.flwr.app]" not in pyproject.read_text():
        raise NdaeError(f"the Flower app (pyproject.toml with [tool.flwr.app]) is not at {root}: run from a source "
                        "checkout (pip install -e .)")
    return root


APP_NAME = "ndae-fed"
APP_FILES = ("pyproject.toml", "client", "server")  # what pyproject's fab-include bundles


def stage_app(destination_parent: str | Path, source: Path | None = None) -> Path:
    """Copy the app's bundle files into `<destination_parent>/ndae-fed`.

    `flwr run` insists that the app's folder name is a valid Flower app name; a checkout may sit in
    any folder (CI clones into one of its own), so runs use a staged copy with a fixed name. The
    copy builds the same bundle (same hash) as the checkout.
    """
    import shutil

    source = source or project_root()
    target = Path(destination_parent) / APP_NAME
    target.mkdir(parents=True, exist_ok=True)
    for name in APP_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source / name, target / name)
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def _wait_healthy(port: int, process: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NdaeError(f"flower-superlink exited with code {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise NdaeError(f"flower-superlink did not become ready within {timeout:.0f} s; see {log_path}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _stop(process: subprocess.Popen, grace: float = 30.0) -> None:
    """Stop a guarded process: its process group holds the guard and the SuperLink; the guard
    then stops what the SuperLink detached (`flower-superexec`, `flwr-simulation`, Ray)."""
    pgid = process.pid
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.5)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def run_simulation(run_config: Mapping[str, Any], num_sites: int, *, app_dir: str | Path | None = None,
                   cpus_per_site: int = 1, log_dir: str | Path | None = None, timeout: float = 3600.0,
                   stream: bool = True) -> dict[str, Any]:
    """Simulate `num_sites` SuperNodes running the app; returns the run's status.json.

    Raises NdaeError if the run did not complete (status not `completed`)."""
    run_dir = Path(str(run_config["run-dir"])).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir) if log_dir else run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    status_path = run_dir / "status.json"
    if status_path.exists():
        status_path.unlink()  # a stale status must not pass for this run's

    home = tempfile.mkdtemp(prefix="ndae-flwr-home-")
    try:
        app_dir = Path(app_dir) if app_dir else stage_app(Path(home) / "app")
        port, control_port = _free_port(), _free_port()
        (Path(home) / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n')
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "FLWR_HOME": home, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
               "FLWR_DISABLE_UPDATE_CHECK": "1", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
               "RAY_DISABLE_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        superlink_log = log_dir / "superlink.log"
        command = [os.path.join(bin_dir, "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
                   "--host", "127.0.0.1", "--port", str(port), "--control-api-address", f"127.0.0.1:{control_port}",
                   "--disable-runtime-dependency-installation"]
        with open(superlink_log, "ab") as handle:
            # The guard deletes FLWR_HOME too if we are killed before the `finally` below runs.
            superlink = spawn_guarded(command, remove=[home], env=env, stdout=handle, stderr=subprocess.STDOUT,
                                      cwd=home)
        try:
            _wait_healthy(port, superlink, superlink_log)
            overrides = " ".join(f"{key}={_config_value(value)}" for key, value in run_config.items())
            federation = (f"num-supernodes={int(num_sites)} client-resources-num-cpus={int(cpus_per_site)} "
                          f"client-resources-num-gpus=0.0")
            command = [os.path.join(bin_dir, "flwr"), "run", str(app_dir), CONNECTION, "--run-config", overrides,
                       "--federation-config", federation] + (["--stream"] if stream else [])
            run_log = log_dir / "flwr_run.log"
            with open(run_log, "ab") as handle:
                handle.write(("$ " + shlex.join(command) + "\n").encode())
                handle.flush()
                flwr_run = spawn_guarded(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=str(app_dir))
                try:
                    returncode = flwr_run.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _stop(flwr_run, grace=5.0)
                    raise NdaeError(f"`flwr run` did not finish within {timeout:.0f} s; see {run_log}") from None
            if returncode != 0:
                raise NdaeError(f"`flwr run` exited with code {returncode}; see {run_log}")
            # --stream returns when the run ends; wait briefly for the final status otherwise.
            deadline = time.monotonic() + (30 if stream else timeout)
            while time.monotonic() < deadline:
                status = _read_status(status_path)
                if status and status.get("status") in ("completed", "failed", "stopped"):
                    break
                time.sleep(1.0)
        finally:
            _stop(superlink)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    status = _read_status(status_path)
    if not status or status.get("status") != "completed":
        raise NdaeError(failure_message(status, log_dir))
    return status


def failure_message(status: Mapping[str, Any] | None, log_dir: Path) -> str:
    """`federated run failed: <the server's error>`, then one line per site that refused or did
    not answer, with the site's own reason (no traceback, no ANSI codes)."""
    error = str((status or {}).get("error") or "the ServerApp wrote no final status")
    head, _, missing = error.partition("; missing: {")
    full = _reasons_by_site("{" + missing) if missing else {}  # untruncated, where the server's error has them
    lines = [f"federated run failed: {strip_ansi(head).splitlines()[0]} (logs: {log_dir})"]
    for entry in (status or {}).get("missing") or []:
        where = f"{entry.get('phase', '?')}" + (f" round {entry['round']}" if entry.get("round") else "")
        reason = str(full.get(entry.get("site"), entry.get("reason", "")))
        prefix = "error: " if reason.startswith("error: ") else ""
        lines.append(f"  site {entry.get('site', '?')} ({where}): {site_reason(reason[len(prefix):]) or reason}")
    return "\n".join(lines)


def _read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _reasons_by_site(text: str) -> dict:
    """The `{site: reason}` dict a FederationError ends with (its repr), or {} if it is not one."""
    import ast

    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return {}
    return value if isinstance(value, dict) else {}
