"""Deployment pieces without a network: credentials, the site-control hook, scripts, configs."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from ndae.deploy import approved_clientapp, pki
from ndae.errors import NdaeError
from ndae.federation.site.app_approval import AppNotApprovedError, ApprovedApps, fab_hash

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


# --- credentials -------------------------------------------------------------------------------
def test_superlink_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path):
    ca_cert_path, ca_key_path = pki.create_ca(tmp_path / "ca")
    cert_path, key_path = pki.issue_superlink_cert(tmp_path / "ca", tmp_path / "tls",
                                                   ["fl.example.org", "127.0.0.1"])
    ca = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for private in (ca_key_path, key_path):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644


def test_site_key_is_an_openssh_p384_pair_that_flower_accepts(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key

    private_path, public_path = pki.create_site_key("hospital-a", tmp_path)
    private = load_ssh_private_key(private_path.read_bytes(), None)
    public = load_ssh_public_key(public_path.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert public_path.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert public_path.read_text().rstrip().endswith(" hospital-a")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert try_load_public_key(public_path)  # what `flwr supernode register` does
    assert pki.fingerprint(public_path).startswith("SHA256:")


def test_existing_keys_are_not_overwritten(tmp_path):
    pki.create_site_key("hospital-a", tmp_path)
    before = (tmp_path / "hospital-a.key").read_bytes()
    with pytest.raises(NdaeError, match="already exists"):
        pki.create_site_key("hospital-a", tmp_path)
    assert (tmp_path / "hospital-a.key").read_bytes() == before
    with pytest.raises(NdaeError, match="site name"):
        pki.create_site_key("../evil", tmp_path)


def test_superlink_cert_needs_the_ca(tmp_path):
    with pytest.raises(NdaeError, match="create the CA first"):
        pki.issue_superlink_cert(tmp_path / "no-ca", tmp_path / "tls", ["localhost"])


def test_private_keys_are_0600_from_their_first_byte(tmp_path, monkeypatch):
    """Every private key is created by os.open(O_CREAT|O_EXCL|O_WRONLY, 0600) in its target folder
    and is already 0600 when renamed/linked into place: no window in which others could read it."""
    opened, published = [], []
    real_open, real_replace, real_link = os.open, os.replace, os.link

    def spy_open(path, flags, mode=0o777, *args, **kwargs):
        opened.append((Path(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    def spy_publish(real):
        def publish(source, target, *args, **kwargs):
            published.append((Path(target).name, stat.S_IMODE(os.stat(source).st_mode), Path(source).parent))
            return real(source, target, *args, **kwargs)
        return publish

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "replace", spy_publish(real_replace))
    monkeypatch.setattr(os, "link", spy_publish(real_link))
    old_umask = os.umask(0)  # the widest umask: only the mode given to os.open protects the key
    try:
        pki.create_ca(tmp_path / "ca")
        pki.issue_superlink_cert(tmp_path / "ca", tmp_path / "tls", ["localhost"])
        pki.create_site_key("hospital-a", tmp_path / "keys")
        pki.create_ledger_key("hospital-a", tmp_path / "privacy")
    finally:
        os.umask(old_umask)
    private = {"ca.key": tmp_path / "ca", "superlink.key": tmp_path / "tls", "hospital-a.key": tmp_path / "keys",
               "hospital-a.signing.key": tmp_path / "privacy"}
    for name, folder in private.items():
        opens = [(p, f, m) for p, f, m in opened if p.name.startswith(f".{name}.")]
        assert opens, f"{name} was not created through os.open"
        for path, flags, mode in opens:
            assert path.parent == folder and mode == 0o600
            assert flags & os.O_CREAT and flags & os.O_EXCL and flags & os.O_WRONLY
        assert [m for n, m, parent in published if n == name] == [0o600], name
        assert all(parent == folder for n, _, parent in published if n == name)
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600


def test_ledger_key_is_registered_and_a_different_key_is_not_replaced_silently(tmp_path, capsys):
    from ndae.privacy.signing import fingerprint, verify_head, sign_head, load_or_create_signing_key

    assert pki.main(["site-key", "hospital-a", "--out", str(tmp_path / "keys"),
                     "--privacy-dir", str(tmp_path / "privacy")]) == 0
    out = capsys.readouterr().out
    key_path, pub_path = tmp_path / "privacy" / "hospital-a.signing.key", tmp_path / "privacy" / "hospital-a.signing.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600 and stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert fingerprint(pub_path.read_text()) in out and pki.fingerprint(tmp_path / "keys" / "hospital-a.pub") in out
    registry = tmp_path / "consortium" / "registry"
    assert pki.main(["register-ledger-key", "hospital-a", str(pub_path), "--registry", str(registry)]) == 0
    registered = (registry / "hospital-a.pub").read_text()
    key = load_or_create_signing_key(key_path)
    assert verify_head(registered, "hospital-a", "a" * 64, 2, sign_head(key, "hospital-a", "a" * 64, 2))
    assert pki.register_ledger_key(registry, "hospital-a", pub_path) == registry / "hospital-a.pub"  # same key: fine
    other = pki.create_ledger_key("hospital-b", tmp_path / "privacy-b")[1]
    with pytest.raises(NdaeError, match="already registers another key"):
        pki.register_ledger_key(registry, "hospital-a", other)
    assert (registry / "hospital-a.pub").read_text() == registered
    (tmp_path / "junk.pub").write_text("junk")
    assert pki.main(["register-ledger-key", "hospital-c", str(tmp_path / "junk.pub"), "--registry", str(registry)]) == 1
    assert "junk.pub: not a PEM public key" in capsys.readouterr().err


def test_a_ca_key_open_to_others_is_refused(tmp_path):
    pki.create_ca(tmp_path / "ca")
    (tmp_path / "ca" / "ca.key").chmod(0o644)
    with pytest.raises(NdaeError, match=r"ca\.key: the CA key has mode 0644"):
        pki.issue_superlink_cert(tmp_path / "ca", tmp_path / "tls", ["localhost"])


def test_deploy_steps_inside_a_checkout_leave_no_key_addable_to_git(tmp_path):
    """deploy/README.md creates consortium/ (CA, SuperLink key, registry) in the checkout: git
    must ignore it, and any *.key, wherever a user puts it."""
    root = DEPLOY.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["consortium/ca/ca.key", "consortium/superlink-tls/superlink.key", "consortium/registry/site.pub",
             "keys/hospital-a.key", "privacy/hospital-a.signing.key"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=root, capture_output=True, text=True)
    assert sorted(result.stdout.split()) == sorted(paths), result.stdout + result.stderr
    assert "consortium/" in (DEPLOY / "README.md").read_text()


def test_deploy_docs_no_longer_pass_canary_secret():
    for path in [*DEPLOY.rglob("*"), DEPLOY.parent / "ndae" / "deploy" / "loopback.py"]:
        if path.is_file():
            assert "canary-secret" not in path.read_text(errors="replace"), path


# --- site control ------------------------------------------------------------------------------
def test_check_app_bundle_accepts_only_approved_hashes(tmp_path):
    bundle = b"PK\x03\x04 pretend app bundle"
    env = {"NDAE_SITE_DIR": str(tmp_path / "hospital-a")}
    with pytest.raises(AppNotApprovedError) as refused:
        approved_clientapp.check_app_bundle(bundle, env)
    message = str(refused.value)
    assert f"site hospital-a has not approved app {fab_hash(bundle)}" in message
    assert f"ndae site approve {fab_hash(bundle)} --site-dir {tmp_path / 'hospital-a'}" in message

    ApprovedApps(tmp_path / "hospital-a").approve(fab_hash(bundle))
    assert approved_clientapp.check_app_bundle(bundle, env) == fab_hash(bundle)
    with pytest.raises(AppNotApprovedError, match="has not approved"):
        approved_clientapp.check_app_bundle(bundle + b"!", env)  # one byte more
    with pytest.raises(AppNotApprovedError, match="NDAE_SITE_DIR is unset"):
        approved_clientapp.check_app_bundle(bundle, {})


def test_hook_checks_before_flower_installs_the_bundle(tmp_path, monkeypatch):
    from flwr.supernode.runtime import run_clientapp as runner

    installed = []
    monkeypatch.setattr(runner, "install_from_fab", lambda content, **kw: installed.append(content))
    monkeypatch.setenv("NDAE_SITE_DIR", str(tmp_path / "site"))
    hook = approved_clientapp.install_hook()
    assert runner.install_from_fab is hook
    assert approved_clientapp.install_hook() is hook  # idempotent
    with pytest.raises(AppNotApprovedError):
        runner.install_from_fab(b"unreviewed", skip_prompt=True)
    assert installed == []  # never unpacked
    ApprovedApps(tmp_path / "site").approve(fab_hash(b"reviewed"))
    runner.install_from_fab(b"reviewed", skip_prompt=True)
    assert installed == [b"reviewed"]


def test_flower_still_has_the_hook_point():
    """Site control relies on run_clientapp calling install_from_fab(fab.content, ...) inside
    its task try-block, after pull_task_input; fail loudly if a Flower upgrade moves it."""
    import inspect

    from flwr.supernode.runtime import run_clientapp as runner

    source = inspect.getsource(runner.run_clientapp)
    pulled = source.index("pull_task_input(client)")
    installed = source.index("install_from_fab(fab.content")
    loaded = source.index("load_client_app_fn(")
    assert source.index("try:") < pulled < installed < loaded < source.index("except Exception")
    assert "CLIENT_APP_RAISED_EXCEPTION" in source


def _fresh_process(script: str) -> str:
    """What `script` prints in a new Python process, as Flower starts a ClientApp: nothing imported yet."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=DEPLOY.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_site_runs_flowers_own_clientapp_command_without_the_supernodes_server_side():
    """The wrapper runs Flower's `flwr_clientapp` (same code) through the hooked runner, and its
    process does not import the SuperNode's SQL object store (paid on every message)."""
    script = ("import sys\n"
              "from ndae.deploy import approved_clientapp as a\n"
              "hook = a.install_hook()\n"
              "command = a._flower_clientapp_command()\n"
              "from flwr.supernode.runtime import run_clientapp as runner\n"
              "print(runner.install_from_fab is hook, command.__module__, 'sqlalchemy' in sys.modules)\n"
              "import flwr.supernode.cli.flwr_clientapp\n"
              "flower = sys.modules['flwr.supernode.cli.flwr_clientapp'].flwr_clientapp\n"
              "print(command.__code__.co_code == flower.__code__.co_code,\n"
              "      command.__globals__['run_clientapp'] is runner.run_clientapp)\n")
    assert _fresh_process(script).split() == ["True", "flwr.supernode.cli.flwr_clientapp", "False", "True", "True"]


def test_a_flower_clientapp_command_that_bypasses_the_hooked_runner_is_refused(tmp_path, monkeypatch):
    import importlib.util

    impostor = tmp_path / "flwr_clientapp.py"  # a future Flower whose command runs another runner
    impostor.write_text("def run_clientapp(**kwargs):\n    pass\n\ndef flwr_clientapp():\n    run_clientapp()\n")
    real = importlib.util.spec_from_file_location
    monkeypatch.setattr(importlib.util, "spec_from_file_location", lambda name, path: real(name, impostor))
    with pytest.raises(RuntimeError, match="refusing to run unchecked apps"):
        approved_clientapp._flower_clientapp_command()


def test_a_site_answering_a_cox_query_imports_no_scipy_lifelines_or_torch():
    """Flower starts a fresh ClientApp process for every message at every site: the modules a
    federated Cox query needs load without scipy, lifelines or torch (paid on every Newton step)."""
    script = ("import sys\n"
              "import client.client_app\n"
              "import ndae.survival.federated_cox, ndae.deviation.scores\n"
              "from ndae.federation.site import survival_queries\n"
              "print(sorted(m for m in ('scipy', 'lifelines', 'sksurv', 'torch') if m in sys.modules))\n")
    assert _fresh_process(script).strip() == "[]"


# --- scripts and configuration -----------------------------------------------------------------
def test_scripts_are_executable_and_parse():
    scripts = sorted(DEPLOY.glob("*.sh")) + [DEPLOY / "bin" / "flwr-clientapp"]
    assert len(scripts) >= 6
    for script in scripts:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        shell = "sh" if script.name == "flwr-clientapp" else "bash"
        subprocess.run([shell, "-n", str(script)], check=True)


def test_start_supernode_names_what_is_missing(tmp_path):
    env = {"PATH": os.environ["PATH"], "NDAE_SUPERLINK": "127.0.0.1:1"}
    result = subprocess.run(["bash", str(DEPLOY / "start-supernode.sh")], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "NDAE_CA_CERT is not set" in result.stderr


def test_site_wrapper_runs_our_module_with_the_configured_python(tmp_path):
    # A stand-in "python" that records its arguments shows what the wrapper executes.
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    result = subprocess.run([str(DEPLOY / "bin" / "flwr-clientapp"), "--token", "abc"],
                            env={"PATH": "/usr/bin:/bin", "NDAE_PYTHON": str(fake)},
                            capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.split() == ["-m", "ndae.deploy.approved_clientapp", "--token", "abc"]


def test_docker_compose_services_match_the_scripts():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"superlink", "supernode"}
    assert services["superlink"]["command"] == ["deploy/start-superlink.sh"]
    assert services["supernode"]["command"] == ["deploy/start-supernode.sh"]
    assert "ports" not in services["supernode"]  # a hospital only dials out
    for name, service in services.items():
        script = (DEPLOY / service["command"][0].removeprefix("deploy/")).read_text()
        for variable in service["environment"]:
            if variable.startswith("NDAE_"):
                assert variable in script, f"{name}: {variable} is not read by its start script"
    assert (DEPLOY / "Dockerfile").is_file()


# --- where the shipped layouts let a site write ------------------------------------------------
def _unit_settings(path: Path) -> dict[str, list[str]]:
    """systemd unit keys -> every value given (a key may repeat; values are space-separated)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).extend(shlex.split(value))
    return settings


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = " ".join(shlex.split(value))
    return values


def _node_config(text: str) -> dict:
    from flwr.common.config import parse_config_args

    return parse_config_args([text])


def _inside(path: str, folders) -> bool:
    return any(Path(path) == Path(f) or Path(f) in Path(path).parents for f in folders)


def test_systemd_supernode_writes_only_inside_its_state_dir():
    unit = _unit_settings(DEPLOY / "systemd" / "ndae-supernode.service")
    assert unit["ProtectSystem"] == ["strict"]  # everything not listed below is read-only
    writable = [f"/var/lib/{d}" for d in unit.get("StateDirectory", [])] + \
        [f"/var/cache/{d}" for d in unit.get("CacheDirectory", [])] + unit.get("ReadWritePaths", [])
    env = _env_file(DEPLOY / "systemd" / "supernode.env.example")
    environment = dict(item.split("=", 1) for item in unit.get("Environment", []))
    node = _node_config(env["NDAE_NODE_CONFIG"])
    for where in (node["privacy-dir"], node["cache-dir"], env["NDAE_SITE_DIR"], environment["HOME"],
                  environment["NDAE_CACHE"]):
        assert _inside(where, writable), f"{where} is read-only under the shipped unit ({writable})"
    assert not _inside(env["NDAE_MANIFEST"], writable)  # the imaging data stay read-only


def test_compose_supernode_writes_only_to_its_mounted_site_folder():
    service = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["supernode"]
    mounts = []
    for volume in service["volumes"]:  # HOST:TARGET[:MODE]; HOST is a ${VAR:?message} that may hold colons
        rest = volume[volume.index("}") + 1:] if volume.startswith("${") else volume[volume.index(":"):]
        target, _, mode = rest.removeprefix(":").partition(":")
        mounts.append((target, mode or "rw"))
    writable = [target for target, mode in mounts if mode != "ro"]
    read_only = [target for target, mode in mounts if mode == "ro"]
    environment = service["environment"]
    node = _node_config(environment["NDAE_NODE_CONFIG"].replace("${NDAE_NODE_CONFIG:-}", ""))
    # A container's own file system is lost with it: a ledger there would reset the site's budget.
    for where in (node["privacy-dir"], node["cache-dir"], environment["NDAE_SITE_DIR"], environment["HOME"],
                  environment["NDAE_CACHE"]):
        assert _inside(where, writable), f"{where} is not on a writable mounted volume ({writable})"
    manifest = environment["NDAE_MANIFEST"].split("$", 1)[0]
    assert _inside(manifest, read_only) and not _inside(manifest, writable)
    assert "/data" in read_only and all(_inside(key, read_only) for key in
                                        (environment["NDAE_CA_CERT"], environment["NDAE_SITE_KEY"]))


def test_site_dir_privacy_dir_and_cache_are_what_the_readme_tells_a_site_to_prepare():
    readme = (DEPLOY / "README.md").read_text()
    node = _node_config(_env_file(DEPLOY / "systemd" / "supernode.env.example")["NDAE_NODE_CONFIG"])
    assert f"--privacy-dir {node['privacy-dir']}" in readme  # make-site-key.sh puts the key there
    assert f"--out {node['cache-dir']}" in readme  # ndae prepare fills the cache there


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
