"""What a Flower user meets: `flwr run .` on a simulation SuperLink, and the test-only run config keys.

A bare `flwr run .` has no cohort: it runs the small demo cohort (cached) to a report. A cohort-dir
that is not a cohort stops the ServerApp at its start, before any message reaches a site, with one
line naming `ndae demo` and the run config keys for an existing cohort. Flower's runtime `uv sync`
on the app's pyproject must be a no-op (nothing downloaded), so the apps start within seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from ndae.errors import NdaeError
from ndae.federation.config import FederationConfig

ROOT = Path(__file__).resolve().parents[1]


# ---- test hooks stay out of a consortium's runs ------------------------------------------------
@pytest.mark.parametrize("key, value", [("fault-site", "site1"), ("fault-phase", "train"), ("fault-round", 1),
                                        ("stop-after-round", 2)])
def test_a_test_hook_without_ndae_test_hooks_is_refused_naming_the_key(monkeypatch, key, value):
    monkeypatch.delenv("NDAE_TEST_HOOKS", raising=False)
    with pytest.raises(NdaeError, match=f"'{key}'.*test hook.*NDAE_TEST_HOOKS=1"):
        FederationConfig.from_run_config({key: value})
    with pytest.raises(NdaeError, match=f"'{key}'"):
        FederationConfig(**{key.replace("-", "_"): value})  # the server's own path (run_federation) too
    FederationConfig.from_run_config(FederationConfig().to_run_config())  # the declared defaults pass
    monkeypatch.setenv("NDAE_TEST_HOOKS", "1")
    assert getattr(FederationConfig.from_run_config({key: value}), key.replace("-", "_")) == value


def test_the_hooks_stay_declared_for_flower_but_marked_test_only():
    # Flower refuses --run-config keys the app does not declare (flwr.common.config.fuse_dicts).
    from flwr.common.config import fuse_dicts

    with pytest.raises(ValueError, match="not present"):
        fuse_dicts({"rounds": 3}, {"fault-site": "x"})
    text = (ROOT / "pyproject.toml").read_text()
    declared = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    for key in ("fault-site", "fault-phase", "fault-round", "stop-after-round"):
        assert declared[key] == FederationConfig.__dataclass_fields__[key.replace("-", "_")].default
    block = text[text.index("[tool.flwr.app.config]"):]
    assert re.search(r"#[^\n]*[Tt]est hooks[^\n]*not for a consortium[^\n]*\n(#[^\n]*\n)*fault-site", block)


# ---- the ServerApp's first check -----------------------------------------------------------------
class _RecordingGrid(InMemoryGrid):
    """The simulation's grid type, recording what the ServerApp would send."""

    def __init__(self):  # no LinkState: nothing may be sent
        self.calls = []

    def __getattribute__(self, name):
        if name in ("send_and_receive", "push_messages", "pull_messages", "get_node_ids", "create_message"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)


def _server_main(run_config):
    from server.server_app import main

    grid = _RecordingGrid()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    return grid, lambda: main(grid, context)


# An empty cohort-dir runs the small demo cohort instead (tests/test_demo_cohort_cache.py).
@pytest.mark.parametrize("cohort_dir", ["no/such/cohort"])
def test_a_simulation_without_a_cohort_stops_before_any_message(tmp_path, monkeypatch, caplog, cohort_dir):
    monkeypatch.chdir(tmp_path)
    config = {**FederationConfig(run_dir=str(tmp_path / "run")).to_run_config(), "cohort-dir": cohort_dir}
    grid, run = _server_main(config)
    started = time.monotonic()
    with pytest.raises(NdaeError) as raised:
        run()
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert "`ndae demo`" in message and "cohort-dir=" in message and "run-dir=" in message
    assert "\n" not in message
    assert grid.calls == []  # no site was asked anything
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_deployment_with_an_empty_cohort_dir_is_not_stopped(tmp_path):
    # A real SuperLink's grid: the sites name their manifests in their node configs.
    from ndae.federation.server.preflight import check_simulation_cohort

    check_simulation_cohort(object(), {"cohort-dir": ""})


# ---- Flower's runtime `uv sync` --------------------------------------------------------------------
def _dependency_names(project):
    specs = list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        specs += extra
    return {re.split(r"[\s\[<>=!~;@]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def test_uv_excludes_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    excluded = {name.lower() for name in project["tool"]["uv"]["exclude-dependencies"]}
    assert _dependency_names(project) <= excluded, _dependency_names(project) - excluded


def test_flowers_uv_sync_on_the_app_installs_nothing_within_seconds(tmp_path):
    if subprocess.run([sys.executable, "-m", "uv", "--version"], capture_output=True).returncode != 0:
        pytest.skip("uv is not installed (flwr 1.42 depends on it; Flower's runtime install needs it)")
    app = tmp_path / "app"  # what the FAB holds: pyproject.toml + fab-include
    app.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", app)
    for folder in ("client", "server"):
        shutil.copytree(ROOT / folder, app / folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(tmp_path / "env"), "UV_OFFLINE": "1",
           "UV_CACHE_DIR": str(tmp_path / "uv-cache")}
    env.pop("VIRTUAL_ENV", None)
    # The command flwr.supercore.superexec.dependency_installer.install_app_dependencies runs.
    command = [sys.executable, "-m", "uv", "sync", "--python", sys.executable, "--no-install-project",
               "--no-install-package", "flwr", "--inexact"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=app, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    installed = [p for p in (tmp_path / "env").glob("lib/python*/site-packages/*") if not p.name.startswith("_")]
    assert [p.name for p in installed if not p.name.endswith(".pth")] == []  # no torch, nothing at all


# ---- `flwr run . --stream` itself, Flower's runtime install enabled ----------------------------------
@pytest.mark.slow
def test_bare_flwr_run_stream_runs_the_small_demo_cohort_to_a_report(tmp_path):
    """The user's first command, on a simulation SuperLink as `flwr run .` starts one (runtime
    dependency installation on), with no cohort: the small demo cohort, to a report whose path the
    last lines name with how to stop the SuperLink. Private FLWR_HOME and free ports, so no other
    run is touched.

    Only what a first run needs for its report: no training round, no voxel-wise baseline, no prior
    residuals, Cox by federated Newton rounds rather than the pooled survival statistics. Those phases
    are checked end to end elsewhere: training, the voxel-wise and the prior residual queries through
    Flower's simulation engine (tests/test_federation_flwr.py), pooled survival over a TLS deployment
    (tests/test_deploy_loopback.py) and in process (tests/test_federation.py)."""
    from ndae.child_processes import spawn_guarded
    from ndae.federation.simulation import _free_port, _stop, _wait_healthy, stage_app

    home = tmp_path / "flwr-home"
    home.mkdir()
    app = stage_app(tmp_path / "app")
    port, control_port = _free_port(), _free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "here"\n\n[superlink.here]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_DISABLE_USAGE_STATS": "1",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    for name in ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "NDAE_TEST_HOOKS", "VIRTUAL_ENV"):
        env.pop(name, None)
    log = tmp_path / "superlink.log"
    with open(log, "wb") as handle:
        superlink = spawn_guarded([os.path.join(bin_dir, "flower-superlink"), "--insecure", "--simulation",
                                   "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(port),
                                   "--control-api-address", f"127.0.0.1:{control_port}"],
                                  env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=str(home))
    try:
        _wait_healthy(port, superlink, log)
        started = time.monotonic()
        run_dir = tmp_path / "run"
        done = subprocess.run([os.path.join(bin_dir, "flwr"), "run", ".", "--stream", "--run-config",
                               f"run-dir='{run_dir}' rounds=0 voxelwise-baseline=false prior-residuals=false "
                               "survival-mode='federated'"], cwd=app, env=env,
                              capture_output=True, text=True, timeout=900)
        seconds = time.monotonic() - started
    finally:
        _stop(superlink)
    output = done.stdout + done.stderr
    assert "uv sync took" in output and "No additional application dependencies needed installation" in output
    assert "simulating the small demo cohort" in output and "Traceback" not in output, output[-3000:]
    assert f"report: {run_dir / 'report.md'}" in output and "pkill -f 'flower-superlink --insecure --simulation'" in output
    assert (run_dir / "report.md").read_text().splitlines()[2].startswith("**Verdict")
    assert seconds < 900, seconds
