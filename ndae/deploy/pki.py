"""Consortium credentials: a CA, the SuperLink's TLS certificate, and per-site node keys.

Two separate things protect a deployment (both checked by Flower 1.42):
- TLS: the SuperLink presents a certificate signed by the consortium CA; every SuperNode and
  every `flwr` CLI user verifies it with `ca.crt` (server authentication + encryption).
- Node authentication: each site owns an ECDSA P-384 key in OpenSSH format. The SuperLink runs
  with `--enable-supernode-auth` and only accepts SuperNodes whose public key was registered
  with `flwr supernode register`. A site's private key never leaves the site.

Written with `cryptography` (a Flower dependency), so no openssl/ssh-keygen is needed. Private
keys are written with mode 0600 (ndae.io's temporary files are created 0600), public material
0644. Command line: `python -m ndae.deploy.pki {ca,superlink-cert,site-key,fingerprint} ...`.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ndae.errors import NdaeError
from ndae.io import atomic_write_bytes

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "superlink.crt", "superlink.key"
_CURVE = ec.SECP384R1


def _write_private(path: Path, data: bytes, force: bool) -> None:
    if path.exists() and not force:
        raise NdaeError(f"{path} already exists; refusing to overwrite a key (use --force to replace it)")
    atomic_write_bytes(path, data)  # created 0600 by mkstemp
    os.chmod(path, 0o600)


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
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
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


def create_site_key(site: str, out_dir: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """A site's SuperNode key pair: `<site>.key` (OpenSSH private, stays at the site) and
    `<site>.pub` (OpenSSH public, sent to the consortium to be registered)."""
    if not site or any(c in site for c in "/\\ \t\n"):
        raise NdaeError(f"site name {site!r}: use letters, digits, '-', '_' only")
    out = Path(out_dir)
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    _write_private(out / f"{site}.key", private, force)
    _write_public(out / f"{site}.pub", public + f" {site}\n".encode())
    return out / f"{site}.key", out / f"{site}.pub"


def fingerprint(public_key_file: str | os.PathLike) -> str:
    """OpenSSH-style SHA256 fingerprint (same as `ssh-keygen -lf`), to confirm a key by phone."""
    fields = Path(public_key_file).read_text().split()
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
        else:
            print(fingerprint(args.public_key))
            return 0
    except NdaeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    if args.action == "site-key":
        print(f"{paths[1]}: {fingerprint(paths[1])}  (read this out to the consortium operator)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
