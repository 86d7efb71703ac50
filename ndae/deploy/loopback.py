"""A whole consortium on one machine (127.0.0.1): the deployment, rehearsed with real processes.

It uses exactly what a consortium uses (`ndae.deploy.pki`, `deploy/start-superlink.sh`,
`deploy/start-supernode.sh`, `flwr supernode register`, `flwr run`), with TLS and SuperNode
authentication on, so the CI test and a first-time operator exercise the same path:

    python -m ndae.deploy.loopback --app /path/to/ndae-fed --cohort /path/to/cohort \
        --run-config 'rounds=0 min-sites=3 privacy=true run-dir="/tmp/rehearsal/run"'

Its SuperNodes are deployed ones (`deploy/start-supernode.sh` names their `site-dir`), so they
refuse a non-private job unless `--node-config 'require-privacy=false'` opts out.

Every process is started in its own session and stopped by its PID (children found through
/proc first, since Flower detaches its `flower-superexec`); every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ndae.child_processes import descendants as _children, preexec, stop_pids as _stop_pids
from ndae.deploy import pki
from ndae.errors import NdaeError
from ndae.io import atomic_write_text

REPO_DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
CONNECTION = "consortium"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        children = _children(self.popen.pid)
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        _stop_pids(children, timeout)  # Flower's detached flower-superexec and its task processes


@dataclass
class LoopbackConsortium:
    """Credentials, SuperLink, SuperNodes and a `flwr` CLI config under `root`."""

    root: Path
    deploy_dir: Path = REPO_DEPLOY_DIR
    port: int = 0
    # SuperLink state: a SQLite file as in production, or ":flwr-in-memory:". On a heavily
    # loaded machine the file can stay locked > 5 s (Flower's busy_timeout); the SuperLink then
    # answers 500 and the SuperNode exits (a supervisor restarts it in production).
    database: str = ""
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.deploy_dir = Path(self.deploy_dir)
        for script in ("start-superlink.sh", "start-supernode.sh", "bin/flwr-clientapp"):
            if not (self.deploy_dir / script).is_file():
                raise NdaeError(f"{self.deploy_dir / script}: missing (deploy_dir must be the repo's deploy/)")
        self.port = self.port or free_port()
        self.tls_dir = self.root / "superlink-tls"
        self.cli_home = self.root / "flwr-cli"
        self.registry = self.root / "consortium" / "registry"  # sites' ledger-signing public keys

    # Environment shared by every process: no telemetry, no update check, our venv first.
    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1")
        env.pop("FLWR_HOME", None)
        env.update(extra)
        return env

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> Process:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as handle:
            popen = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root, start_new_session=True,
                                     preexec_fn=preexec())
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the `flwr` CLI against this consortium (config in root/flwr-cli/config.toml)."""
        return subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], capture_output=True,
                              text=True, timeout=timeout, env=self._env(FLWR_HOME=str(self.cli_home)))

    # --- the consortium operator -------------------------------------------------------------
    def create_credentials(self) -> None:
        pki.create_ca(self.root / "ca")
        pki.issue_superlink_cert(self.root / "ca", self.tls_dir, ["localhost", "127.0.0.1"])
        (self.tls_dir / pki.CA_CERT).write_bytes((self.root / "ca" / pki.CA_CERT).read_bytes())
        atomic_write_text(self.cli_home / "config.toml", (
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.root / "ca" / pki.CA_CERT}"\n'))

    def start_superlink(self, timeout: float = 60.0) -> Process:
        env = self._env(NDAE_TLS_DIR=str(self.tls_dir), NDAE_SUPERLINK_HOST="127.0.0.1",
                        NDAE_SUPERLINK_PORT=str(self.port),
                        NDAE_SUPERLINK_DATABASE=self.database or str(self.root / "superlink" / "state.db"))
        process = self._start("superlink", ["bash", str(self.deploy_dir / "start-superlink.sh")], env)
        self.wait_for_log(process, "Application startup complete", timeout)
        return process

    def register(self, public_key: Path, name: str) -> str:
        result = self.flwr("supernode", "register", str(public_key), CONNECTION, "--name", name,
                           "--format", "json")
        reply = _json_reply(result)
        if not reply.get("success") or "node-id" not in reply:
            raise NdaeError(f"registering {name} failed:\n{result.stdout}\n{result.stderr}")
        return str(reply["node-id"])

    # --- a hospital ----------------------------------------------------------------------------
    def site_dir(self, site: str) -> Path:
        return self.root / "sites" / site

    def create_site(self, site: str, manifest: Path | None = None) -> tuple[Path, Path]:
        """Site key pair (private key stays in the site folder) and a manifest path; the site's
        ledger-signing key in its default privacy-dir (beside the manifest), its public key
        registered in `self.registry` (for `ndae audit RUN --keys`)."""
        key, public = pki.create_site_key(site, self.site_dir(site) / "keys")
        if manifest is None:
            manifest = self.site_dir(site) / "manifest.csv"
            if not manifest.exists():
                atomic_write_text(manifest, "subject,site,image,age,sex,group\n")
        (self.site_dir(site) / "manifest-path").write_text(str(manifest))
        _, signing_public = pki.create_ledger_key(site, Path(manifest).resolve().parent / "privacy")
        pki.register_ledger_key(self.registry, site, signing_public)
        return key, public

    def start_supernode(self, site: str, extra_args: tuple[str, ...] = (),
                        node_config: str = "") -> Process:
        site_dir = self.site_dir(site)
        env = self._env(NDAE_SUPERLINK=f"127.0.0.1:{self.port}",
                        NDAE_CA_CERT=str(self.root / "ca" / pki.CA_CERT),
                        NDAE_SITE_KEY=str(site_dir / "keys" / f"{site}.key"),
                        NDAE_SITE_DIR=str(site_dir), NDAE_SITE_NAME=site,
                        NDAE_MANIFEST=(site_dir / "manifest-path").read_text(),
                        NDAE_RUNTIME_PORT=str(free_port()), NDAE_NODE_CONFIG=node_config,
                        NDAE_PYTHON=sys.executable)
        return self._start(f"supernode-{site}", ["bash", str(self.deploy_dir / "start-supernode.sh"),
                                                 *extra_args], env)

    # --- the researcher ------------------------------------------------------------------------
    def run(self, app: Path, run_config: str = "") -> str:
        args = ["run", str(app), CONNECTION, "--format", "json"]
        if run_config:
            args += ["--run-config", run_config]
        result = self.flwr(*args, timeout=120)
        reply = _json_reply(result)
        if not reply.get("success") or not reply.get("run-id"):
            raise NdaeError(f"flwr run failed:\n{result.stdout}\n{result.stderr}")
        return str(reply["run-id"])

    def run_status(self, run_id: str) -> str:
        result = self.flwr("list", CONNECTION, "--run-id", run_id, "--format", "json")
        runs = _json_reply(result).get("runs") or [{}]
        return str(runs[0].get("status", "unknown"))

    def wait_run(self, run_id: str, timeout: float = 180.0, done_file: Path | None = None) -> str:
        """Wait until the run is finished; if the app writes `done_file` at its end, watch that
        first (each `flwr list` costs a few CPU seconds)."""
        deadline = time.monotonic() + timeout
        while done_file is not None and not Path(done_file).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(2.0)
        raise NdaeError(f"run {run_id} did not finish within {timeout:.0f} s (last status: {status})")

    # --- waiting and stopping ------------------------------------------------------------------
    @staticmethod
    def wait_for_log(process: Process, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in process.text():
                return
            if process.popen.poll() is not None:
                raise NdaeError(f"{process.name} exited ({process.popen.returncode}) before "
                                f"'{text}':\n{process.text()[-3000:]}")
            time.sleep(0.25)
        raise NdaeError(f"{process.name}: no '{text}' within {timeout:.0f} s:\n{process.text()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every process we started (by PID), wait, SIGKILL what is left; then the
        descendants Flower detached (flower-superexec, ServerApp/ClientApp processes)."""
        children = {child for process in self.processes for child in _children(process.popen.pid)}
        running = [process for process in self.processes if process.popen.poll() is None]
        for process in running:
            process.popen.terminate()
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=timeout)
        _stop_pids(children, 5.0)

    def __enter__(self) -> "LoopbackConsortium":
        # SIGTERM (e.g. `timeout`) becomes an exception, so __exit__ still stops everything.
        self._previous_sigterm = None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ndae.deploy.loopback", description=__doc__.split("\n")[0])
    parser.add_argument("--app", required=True, help="Flower app folder (its pyproject.toml)")
    parser.add_argument("--sites", type=int, default=3, help="number of sites (without --cohort)")
    parser.add_argument("--cohort", default="", help="cohort folder: one site per sites/<site>/manifest.csv")
    parser.add_argument("--root", default="", help="working folder (default: a new temporary one)")
    parser.add_argument("--run-config", default="")
    parser.add_argument("--node-config", default="", help="extra node config for every SuperNode")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    import tempfile

    root = Path(args.root or tempfile.mkdtemp(prefix="ndae-loopback-"))
    app_hash = _app_hash(Path(args.app))
    with LoopbackConsortium(root) as consortium:
        consortium.create_credentials()
        consortium.start_superlink()
        nodes = []
        if args.cohort:
            manifests = sorted(Path(args.cohort).resolve().glob("sites/*/manifest.csv"))
            if not manifests:
                raise NdaeError(f"{args.cohort}: no sites/<site>/manifest.csv")
        else:
            manifests = [None] * args.sites
        for index, manifest in enumerate(manifests):
            site = manifest.parent.name if manifest else f"site-{index + 1}"
            _, public = consortium.create_site(site, manifest)
            consortium.register(public, site)
            from ndae.federation.site.app_approval import ApprovedApps

            ApprovedApps(consortium.site_dir(site)).approve(app_hash, "loopback rehearsal")
            nodes.append(consortium.start_supernode(site, node_config=args.node_config))
        for node in nodes:
            consortium.wait_for_log(node, "SuperNode ID:", 120)
        run_id = consortium.run(Path(args.app), args.run_config)
        status = consortium.wait_run(run_id, args.timeout)
        print(f"run {run_id}: {status}; logs under {root / 'logs'}; audit a private run with "
              f"`ndae audit RUN_DIR --keys {consortium.registry}`")
        return 0 if status == "finished:completed" else 1


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _json_reply(result: subprocess.CompletedProcess) -> dict:
    """The JSON object `flwr ... --format json` prints (it exits 0 even on failure)."""
    text = result.stdout
    try:
        return json.loads(text[text.index("{"):])
    except ValueError:
        return {}


def _app_hash(app: Path) -> str:
    from flwr.cli.build import build_fab_from_disk

    from ndae.federation.site.app_approval import fab_hash

    return fab_hash(build_fab_from_disk(app.resolve()))


if __name__ == "__main__":
    sys.exit(main())
