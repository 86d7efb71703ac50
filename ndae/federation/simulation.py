"""Run the federated app with Flower's simulation engine: `flwr run <app> <connection>`.

`flwr run` against the built-in `local` connection starts a detached SuperLink on fixed ports
and leaves it running. Here we start our own simulation-mode SuperLink on free ports, under a
private `FLWR_HOME` (its `config.toml` names that SuperLink), submit the run with `flwr run
--stream`, and stop the SuperLink (and the processes it started) by its process group when the
run ends, whatever happens. Runtime dependency installation is disabled: the simulation uses
the installed project, it never builds a fresh environment.

`flwr run` exits 0 even when a ClientApp raised or the ServerApp failed, so success is read
from the run directory's `status.json`, which the ServerApp writes.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from ndae.errors import NdaeError

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
    """Stop the SuperLink and everything it started: its own process group, which includes
    `flwr-simulation` and the Ray actors (they outlive the SuperLink if not signalled)."""
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

    with tempfile.TemporaryDirectory(prefix="ndae-flwr-home-") as home:
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
            superlink = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=home)
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
                result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
                                        cwd=str(app_dir))
            if result.returncode != 0:
                raise NdaeError(f"`flwr run` exited with code {result.returncode}; see {run_log}")
            # --stream returns when the run ends; wait briefly for the final status otherwise.
            deadline = time.monotonic() + (30 if stream else timeout)
            while time.monotonic() < deadline:
                status = _read_status(status_path)
                if status and status.get("status") in ("completed", "failed", "stopped"):
                    break
                time.sleep(1.0)
        finally:
            _stop(superlink)
    status = _read_status(status_path)
    if not status or status.get("status") != "completed":
        reason = (status or {}).get("error") or "the ServerApp wrote no final status"
        raise NdaeError(f"federated run failed: {reason} (logs: {log_dir})")
    return status


def _read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
