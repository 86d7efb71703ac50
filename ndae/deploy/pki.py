"""Consortium credentials: a CA, the SuperLink's TLS certificate, and per-site node keys.

Two separate things protect a deployment (both checked by Flower 1.42):
- TLS: the SuperLink presents a certificate signed by the consortium CA; every SuperNode and
  every `flwr` CLI user verifies it with `ca.crt` (server authentication + encryption).
- Node authentication: each site owns an ECDSA P-384 key in OpenSSH format. The SuperLink runs
  with `--enable-supernode-auth` and only accepts SuperNodes whose public key was registered
  with `flwr supernode register`. A site's private key never leaves the site.

A third protects the privacy audit (not checked by Flower): each site signs the head of its
privacy ledger with an Ed25519 key of its own (`ndae.privacy.signing`), created with its node key
(`site-key --privacy-dir DIR`). The consortium keeps the sites' signing public keys in a
registry folder, `consortium/registry/<site>.pub` (`register-ledger-key`), which
`ndae audit RUN --keys consortium/registry` checks every head signature against.

Written with `cryptography` (a Flower dependency), so no openssl/ssh-keygen is needed. Private
keys are created 0600 from their first byte (O_EXCL temporary file in the target folder, then
renamed: never a moment readable by others), public material 0644. Command line:
`python -m ndae.deploy.pki {ca,superlink-cert,site-key,ledger-key,register-ledger-key,fingerprint} ...`.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import ipaddress
import os
import stat
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ndae.errors import NdaeError
from ndae.io import atomic_write_bytes
from ndae.privacy import signing

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "superlink.crt", "superlink.key"
_CURVE = ec.SECP384R1


def _write_private(path: Path, data: bytes, force: bool) -> None:
    if path.exists() and not force:
        raise NdaeError(f"{path} already exists; refusing to overwrite a key (use --force to replace it)")
    try:  # 0600 from the first byte; without force, never clobbers a key created meanwhile
        signing.write_secret_bytes(path, data, overwrite=force)
    except NdaeError:
        raise NdaeError(f"{path} already exists; refusing to overwrite a key (use --force to replace it)") from None


def _write_public(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    os.chmod(path, 0o644)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(out_dir: str | os.PathLike, name: str = "ndae-fed consortium CA", days: int = 3650,
              force: bool = False) -> tuple[Path, Path]:
    """Self-signed consortium CA (P-384). Keep `ca.key` offline; distribute only `ca.crt`."""
    out = Path(out_dir)
    key = ec.generate_private_key(_CURVE())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - _dt.timedelta(minutes=5))
        .not_valid_after(_now() + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private(out / CA_KEY, _pem_key(key), force)
    _write_public(out / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return out / CA_CERT, out / CA_KEY


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    for path in (cert_path, key_path):
        if not path.is_file():
            raise NdaeError(f"{path}: missing; create the CA first (`python -m ndae.deploy.pki ca --out {ca_dir}`)")
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise NdaeError(f"{key_path}: the CA key has mode {mode:04o}, open to group/others; chmod 600 it "
                        f"(and consider it compromised if others could read it)")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as error:
        raise NdaeError(f"{cert_path}: not a PEM certificate ({error})") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise NdaeError(f"{key_path}: not an unencrypted PEM private key ({error})") from None
    return cert, key


def _subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_superlink_cert(ca_dir: str | os.PathLike, out_dir: str | os.PathLike, hosts: list[str],
                         days: int = 825) -> tuple[Path, Path]:
    """TLS server certificate for the SuperLink, valid for every name/IP in `hosts` (SANs).

    `hosts` must contain the address SuperNodes and `flwr` users dial (e.g. `fl.example.org`),
    and `127.0.0.1`/`localhost` when the SuperLink's own ServerApp process connects locally.
    """
    if not hosts:
        raise NdaeError("the SuperLink certificate needs at least one --host (DNS name or IP)")
    ca_cert, ca_key = _load_ca(Path(ca_dir))
    out = Path(out_dir)
    key = ec.generate_private_key(_CURVE())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - _dt.timedelta(minutes=5))
        .not_valid_after(_now() + _dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(out / SERVER_KEY, _pem_key(key), force=True)
    _write_public(out / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return out / SERVER_CERT, out / SERVER_KEY


def _check_site(site: str) -> None:
    if not site or site.startswith(".") or any(c in site for c in "/\\ \t\n"):
        raise NdaeError(f"site name {site!r}: use letters, digits, '-', '_' only")


def create_site_key(site: str, out_dir: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """A site's SuperNode key pair: `<site>.key` (OpenSSH private, stays at the site) and
    `<site>.pub` (OpenSSH public, sent to the consortium to be registered)."""
    _check_site(site)
    out = Path(out_dir)
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    _write_private(out / f"{site}.key", private, force)
    _write_public(out / f"{site}.pub", public + f" {site}\n".encode())
    return out / f"{site}.key", out / f"{site}.pub"


def create_ledger_key(site: str, privacy_dir: str | os.PathLike) -> tuple[Path, Path]:
    """The site's ledger-signing key `<privacy_dir>/<site>.signing.key` (Ed25519, 0600, stays at
    the site: the folder the SuperNode's `privacy-dir` names) and `<site>.signing.pub`, which the
    site sends to the consortium to be registered. An existing key is kept, never replaced: a new
    key would no longer match the registry."""
    _check_site(site)
    key_path = signing.signing_key_path(privacy_dir, site)
    signing.load_or_create_signing_key(key_path)
    return key_path, signing.public_key_path(key_path)


def register_ledger_key(registry_dir: str | os.PathLike, site: str, public_key_file: str | os.PathLike,
                        force: bool = False) -> Path:
    """Put a site's ledger-signing public key into the consortium registry as `<site>.pub`
    (what `ndae audit RUN --keys REGISTRY` reads). Refuses anything but an Ed25519 PEM key, and
    replacing a different registered key unless `force` (a key rotation is a deliberate act)."""
    _check_site(site)
    source = Path(public_key_file)
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise NdaeError(f"{source}: cannot read the public key ({error})") from None
    new = signing.fingerprint(text, str(source))
    target = Path(registry_dir) / f"{site}.pub"
    if target.exists() and not force:
        try:
            old = signing.fingerprint(target.read_text(), str(target))
        except (NdaeError, OSError, UnicodeDecodeError):
            old = None
        if old != new:
            raise NdaeError(f"{target} already registers another key ({old}) for {site!r}; "
                            f"use --force to replace it (a rotation: old ledgers then need the old key)")
    _write_public(target, text.encode("utf-8"))
    return target


def fingerprint(public_key_file: str | os.PathLike) -> str:
    """SHA256 fingerprint, to confirm a key by phone: OpenSSH style (same as `ssh-keygen -lf`) for
    a node key, `ndae.privacy.signing.fingerprint` for a PEM ledger-signing key."""
    text = Path(public_key_file).read_text()
    if text.lstrip().startswith("-----BEGIN"):
        return signing.fingerprint(text, str(public_key_file))
    fields = text.split()
    if len(fields) < 2:
        raise NdaeError(f"{public_key_file}: not an OpenSSH public key")
    blob = base64.b64decode(fields[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ndae.deploy.pki", description=__doc__.split("\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    ca = actions.add_parser("ca", help="create the consortium CA (ca.crt, ca.key)")
    ca.add_argument("--out", required=True)
    ca.add_argument("--name", default="ndae-fed consortium CA")
    ca.add_argument("--days", type=int, default=3650)
    ca.add_argument("--force", action="store_true")
    server = actions.add_parser("superlink-cert", help="issue the SuperLink TLS certificate")
    server.add_argument("--ca", required=True, help="folder with ca.crt and ca.key")
    server.add_argument("--out", required=True)
    server.add_argument("--host", action="append", required=True,
                        help="DNS name or IP the SuperLink is reached at (repeat)")
    server.add_argument("--days", type=int, default=825)
    site = actions.add_parser("site-key", help="create a site's ECDSA P-384 OpenSSH node key pair")
    site.add_argument("site")
    site.add_argument("--out", required=True)
    site.add_argument("--force", action="store_true")
    site.add_argument("--privacy-dir", default=None,
                      help="also create the site's ledger-signing key <site>.signing.key here (the "
                      "SuperNode's privacy-dir); send <site>.signing.pub to the consortium")
    ledger = actions.add_parser("ledger-key", help="create (or show) a site's Ed25519 ledger-signing key")
    ledger.add_argument("site")
    ledger.add_argument("--privacy-dir", required=True, help="the SuperNode's privacy-dir")
    register = actions.add_parser("register-ledger-key",
                                  help="operator: add a site's ledger-signing public key to the registry")
    register.add_argument("site")
    register.add_argument("public_key", help="the <site>.signing.pub the site sent")
    register.add_argument("--registry", required=True, help="the registry folder (consortium/registry)")
    register.add_argument("--force", action="store_true", help="replace a different registered key")
    finger = actions.add_parser("fingerprint", help="SHA256 fingerprint of an OpenSSH public key")
    finger.add_argument("public_key")
    args = parser.parse_args(argv)
    try:
        if args.action == "ca":
            paths = create_ca(args.out, args.name, args.days, args.force)
        elif args.action == "superlink-cert":
            paths = issue_superlink_cert(args.ca, args.out, args.host, args.days)
        elif args.action == "site-key":
            paths = create_site_key(args.site, args.out, args.force)
            if args.privacy_dir:
                paths = (*paths, *create_ledger_key(args.site, args.privacy_dir))
        elif args.action == "ledger-key":
            paths = create_ledger_key(args.site, args.privacy_dir)
        elif args.action == "register-ledger-key":
            paths = (register_ledger_key(args.registry, args.site, args.public_key, args.force),)
        else:
            print(fingerprint(args.public_key))
            return 0
    except NdaeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    for path in paths:
        if path.suffix == ".pub":
            print(f"{path}: {fingerprint(path)}  (read this out to the consortium operator, or check it "
                  f"against what the site read out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
