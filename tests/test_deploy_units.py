"""Deployment pieces without a network: credentials, the site-control hook, scripts, configs."""

from __future__ import annotations

import os
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
from ndae.privacy.site_policy import AppNotApprovedError, SitePolicy, fab_hash

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


# --- site control ------------------------------------------------------------------------------
def test_check_app_bundle_accepts_only_approved_hashes(tmp_path):
    bundle = b"PK\x03\x04 pretend app bundle"
    env = {"NDAE_SITE_DIR": str(tmp_path / "hospital-a")}
    with pytest.raises(AppNotApprovedError) as refused:
        approved_clientapp.check_app_bundle(bundle, env)
    message = str(refused.value)
    assert f"site hospital-a has not approved app {fab_hash(bundle)}" in message
    assert f"ndae site approve {fab_hash(bundle)} --site-dir {tmp_path / 'hospital-a'}" in message

    SitePolicy(tmp_path / "hospital-a").approve(fab_hash(bundle))
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
    SitePolicy(tmp_path / "site").approve(fab_hash(b"reviewed"))
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


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
