"""Signed ledger heads: round trip, every tampered field fails, garbage never raises, key files."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from ndae.errors import NdaeError
from ndae.privacy import signing
from ndae.privacy.signing import (load_or_create_signing_key, public_key_text, sign_head, signing_key_path,
                                  verify_head)

HEAD = "ab" * 32
OTHER = "cd" * 32


@pytest.fixture()
def key(tmp_path):
    return load_or_create_signing_key(signing_key_path(tmp_path / "privacy", "site-a"))


def test_round_trip_and_every_tampered_field_fails(key):
    pem = public_key_text(key)
    signature = sign_head(key, "site-a", HEAD, 4)
    assert verify_head(pem, "site-a", HEAD, 4, signature)
    assert not verify_head(pem, "site-a", OTHER, 4, signature)  # another head
    assert not verify_head(pem, "site-a", HEAD, 3, signature)  # a truncated ledger's length
    assert not verify_head(pem, "site-b", HEAD, 4, signature)  # replayed for another site
    raw = bytearray(base64.b64decode(signature))
    raw[0] ^= 1
    assert not verify_head(pem, "site-a", HEAD, 4, base64.b64encode(bytes(raw)).decode())
    other_key = signing.Ed25519PrivateKey.generate()
    assert not verify_head(public_key_text(other_key), "site-a", HEAD, 4, signature)  # another key
    assert verify_head(pem, "site-a", HEAD, 4, sign_head(key, "site-a", HEAD, 4))  # deterministic key use


def test_the_message_is_versioned_and_binds_every_field():
    message = signing.head_message("site-a", HEAD, 4)
    assert signing.HEAD_MESSAGE_VERSION.encode() in message
    assert b"site-a" in message and HEAD.encode() in message and b'"entries":4' in message


@pytest.mark.parametrize("garbage", [
    dict(signature="not base64 !!"), dict(signature=""), dict(signature=None), dict(signature=12),
    dict(signature=base64.b64encode(b"short").decode()), dict(public_key="-----BEGIN GARBAGE-----"),
    dict(public_key=None), dict(public_key=b"\xff\xfe"), dict(entries="4"), dict(entries=True),
    dict(entries=-1), dict(final_hash="XYZ"), dict(final_hash=None), dict(site=""), dict(site=None),
])
def test_garbage_input_is_false_never_an_exception(key, garbage):
    args = dict(public_key=public_key_text(key), site="site-a", final_hash=HEAD, entries=4,
                signature=sign_head(key, "site-a", HEAD, 4))
    args.update(garbage)
    assert verify_head(args["public_key"], args["site"], args["final_hash"], args["entries"],
                       args["signature"]) is False


def test_a_non_ed25519_public_key_is_refused(key):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert not verify_head(ecdsa, "site-a", HEAD, 4, sign_head(key, "site-a", HEAD, 4))


def test_sign_refuses_a_malformed_head(key):
    with pytest.raises(NdaeError, match="cannot sign"):
        sign_head(key, "site-a", "not a hash", 4)


def test_key_file_is_0600_and_the_public_key_0644_beside_it(tmp_path):
    path = signing_key_path(tmp_path / "privacy", "site-a")
    assert path == tmp_path / "privacy" / "site-a.signing.key"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pub = tmp_path / "privacy" / "site-a.signing.pub"
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert pub.read_text() == public_key_text(key)
    # loading again gives the same key, and no temporary file is left behind
    assert public_key_text(load_or_create_signing_key(path)) == public_key_text(key)
    assert sorted(p.name for p in path.parent.iterdir()) == ["site-a.signing.key", "site-a.signing.pub"]


def test_key_file_is_created_0600_from_its_first_byte(tmp_path, monkeypatch):
    """Spy on os.open: the key is created O_CREAT|O_EXCL with mode 0600 in the target folder,
    never at a wider mode chmod-ed later; and it is that mode before it is published."""
    opened, published = [], []
    real_open, real_link = os.open, os.link

    def spy_open(path, flags, mode=0o777, *args, **kwargs):
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    def spy_link(source, target, *args, **kwargs):
        published.append(stat.S_IMODE(os.stat(source).st_mode))
        return real_link(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "link", spy_link)
    old_umask = os.umask(0)  # the widest umask: only the mode passed to os.open protects the key
    try:
        load_or_create_signing_key(tmp_path / "k" / "site-a.signing.key")
    finally:
        os.umask(old_umask)
    key_opens = [o for o in opened if "site-a.signing.key" in o[0]]
    assert key_opens and all(flags & os.O_CREAT and flags & os.O_EXCL and mode == 0o600
                             for _, flags, mode in key_opens)
    assert all(os.path.dirname(p) == str(tmp_path / "k") for p, _, _ in key_opens)
    assert published == [0o600]


def test_a_key_readable_by_others_is_refused(tmp_path):
    path = signing_key_path(tmp_path, "site-a")
    load_or_create_signing_key(path)
    path.chmod(0o644)
    with pytest.raises(NdaeError, match=r"site-a\.signing\.key.*mode 0644"):
        load_or_create_signing_key(path)
    path.chmod(0o640)
    with pytest.raises(NdaeError, match="group/others"):
        load_or_create_signing_key(path)


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"\xff\xfe\x00",
                                     b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_a_corrupt_key_file_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "site-a.signing.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(NdaeError, match=r"site-a\.signing\.key"):
        load_or_create_signing_key(path)


def test_a_key_of_another_type_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "site-a.signing.key"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)
    with pytest.raises(NdaeError, match="must be Ed25519"):
        load_or_create_signing_key(path)


def test_write_secret_refuses_to_clobber(tmp_path):
    path = tmp_path / "secret"
    signing.write_secret_bytes(path, b"one")
    with pytest.raises(NdaeError, match="already exists"):
        signing.write_secret_bytes(path, b"two")
    assert path.read_bytes() == b"one"
    signing.write_secret_bytes(path, b"three", overwrite=True)
    assert path.read_bytes() == b"three" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_fingerprint_names_the_key(key):
    assert signing.fingerprint(public_key_text(key)).startswith("SHA256:")
    with pytest.raises(NdaeError, match="registry/x.pub"):
        signing.fingerprint("junk", "registry/x.pub")
