"""Signed ledger heads: each site signs the head of its privacy ledger with a key only it holds.

Why: the hash chain only shows that a ledger is *internally* consistent. Whoever can write the
run folder (the server, in this project's threat model) can edit a noise multiplier, recompute
every ε and every hash, and rewrite `privacy/heads.json`; the chain still verifies. A signature
by the site over (site, number of entries, final hash) cannot be recomputed without the site's
private key, so an auditor holding the site's *registered* public key (`ndae audit RUN --keys
DIR`, DIR = the consortium registry of `<site>.pub`) detects any such forgery.

Keys are Ed25519 (the `cryptography` package). The private key lives with the site's ledger,
`<privacy-dir>/<site>.signing.key` (PKCS#8 PEM, mode 0600 from its first byte), and its public
key beside it as `<site>.signing.pub` (PEM, 0644) to be registered with the consortium.

The signed message is versioned and canonical (sorted-key compact JSON), so a signature can never
be replayed for another site, another length or another version. Version 2 (`sign_signed_head`,
what sites send) also binds the run the head was signed in, how many lines of the ledger are that
run's (a later head of the run has more), the site's lifetime ε at the head, its budget (ε, δ),
and whether its noise came from the test-only seed: none of these can then be edited in
`heads.json`. Version 1 (`sign_head`: site, entries, final hash) is still verified, for older runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ndae.errors import NdaeError

HEAD_MESSAGE_VERSION = "ndae-ledger-head/v1"
_HASH = re.compile(r"[0-9a-f]{64}")


# ---- files ------------------------------------------------------------------------------------
def signing_key_path(privacy_dir: str | os.PathLike, site: str) -> Path:
    """The default location of a site's ledger-signing key: `<privacy_dir>/<site>.signing.key`."""
    _check_site(site)
    return Path(privacy_dir) / f"{site}.signing.key"


def public_key_path(key_path: str | os.PathLike) -> Path:
    """`<stem>.pub` beside a key file (`site.signing.key` -> `site.signing.pub`)."""
    return Path(key_path).with_suffix(".pub")


def write_secret_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> None:
    """Write a secret atomically, never readable by anyone else, not even for an instant.

    The temporary file is created in the target folder with O_CREAT|O_EXCL and mode 0600 (so it
    has that mode from its first byte, unlike a file chmod-ed after the rename), fsync-ed, then
    renamed over the target (`overwrite`) or hard-linked to it, which fails if the target exists
    (no clobbering, even when two processes race to create the same key).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask (it can only have removed bits)
            handle = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise NdaeError(f"{path} already exists; refusing to overwrite a key") from None
        except OSError:  # a file system without hard links: check, then rename
            if path.exists():
                raise NdaeError(f"{path} already exists; refusing to overwrite a key") from None
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _write_public_text(path: Path, text: str) -> None:
    from ndae.io import atomic_write_text

    atomic_write_text(path, text)
    os.chmod(path, 0o644)


def load_or_create_signing_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """The site's signing key at `path`, created (0600, no window) if absent; `<stem>.pub` is
    (re)written beside it. Refuses, with NdaeError naming the file, a key that group or others
    may read or write, a path that is not a regular file, and a file that is not an Ed25519 key."""
    path = Path(path)
    if not os.path.lexists(path):
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            write_secret_bytes(path, pem, overwrite=False)
        except NdaeError:
            pass  # another process created it first: use theirs (loaded below)
        except OSError as error:
            raise NdaeError(f"{path}: cannot create the ledger signing key ({error})") from None
    key = _load_private_key(path)
    pub_path, text = public_key_path(path), public_key_text(key)
    try:
        current = pub_path.read_text() if pub_path.exists() else None
    except (OSError, UnicodeDecodeError):
        current = None
    if current != text:
        try:
            _write_public_text(pub_path, text)
        except OSError as error:
            raise NdaeError(f"{pub_path}: cannot write the ledger signing public key ({error})") from None
    return key


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        info = os.lstat(path)
    except OSError as error:
        raise NdaeError(f"{path}: cannot read the ledger signing key ({error.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise NdaeError(f"{path}: the ledger signing key must be a regular file (not a link or folder)")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise NdaeError(f"{path}: the ledger signing key has mode {mode:04o}, open to group/others; "
                        f"it must be readable by its owner only (chmod 600 {path}, and consider it "
                        f"compromised if others could have read it)")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as error:
        raise NdaeError(f"{path}: not a readable unencrypted PEM private key ({error})") from None
    except Exception as error:  # cryptography's UnsupportedAlgorithm and friends
        raise NdaeError(f"{path}: not a usable private key ({type(error).__name__}: {error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise NdaeError(f"{path}: the ledger signing key must be Ed25519, not {type(key).__name__}")
    return key


# ---- public keys ------------------------------------------------------------------------------
def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """PEM (SubjectPublicKeyInfo) text of the public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def load_public_key(text: Any, where: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM text, or NdaeError naming `where`."""
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    if not isinstance(text, bytes):
        raise NdaeError(f"{where}: expected a PEM public key, got {type(text).__name__}")
    try:
        key = serialization.load_pem_public_key(text)
    except Exception as error:  # ValueError, UnsupportedAlgorithm, ...
        raise NdaeError(f"{where}: not a PEM public key ({type(error).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise NdaeError(f"{where}: not an Ed25519 public key ({type(key).__name__})")
    return key


def fingerprint(public_key_pem: str, where: str = "public key") -> str:
    """`SHA256:<base64>` of the raw 32-byte key: short enough to read out over the phone when a
    site registers its key (the same idea as `ssh-keygen -lf`)."""
    raw = load_public_key(public_key_pem, where).public_bytes(serialization.Encoding.Raw,
                                                              serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


# ---- heads ------------------------------------------------------------------------------------
def head_message(site: str, final_hash: str, entries: int) -> bytes:
    """The exact bytes signed: versioned, canonical, binding the site, the length and the head."""
    from ndae.privacy.ledger import canonical_json

    return canonical_json({"version": HEAD_MESSAGE_VERSION, "site": site, "entries": entries,
                           "final_hash": final_hash}).encode("utf-8")


HEAD_V2 = "ndae-ledger-head/v2"
# What a v2 head binds, besides the chain: the run it was signed in, how many of the ledger's lines
# are that run's (its sequence: a later head of the same run has more), the site's lifetime ε at
# that head, its policy (budget ε at δ) and whether its noise came from the test-only seed.
SIGNED_HEAD_FIELDS = ("site", "entries", "final_hash", "run", "run_entries", "epsilon", "delta",
                      "budget_epsilon", "insecure_seed", "private")


def signed_head_problem(head: Any) -> str | None:
    """Why `head` cannot be a v2 signed head (a field missing or of the wrong type), or None."""
    if not isinstance(head, dict):
        return "not an object"
    missing = [name for name in SIGNED_HEAD_FIELDS if name not in head]
    if missing:
        return f"missing {', '.join(missing)}"
    if not _head_fields_ok(head["site"], head["final_hash"], head["entries"]):
        return "site, final_hash or entries malformed"
    if not isinstance(head["run"], str) or not head["run"]:
        return "run must be a non-empty string"
    count = head["run_entries"]
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= head["entries"]:
        return "run_entries must be an integer between 0 and entries"
    for name in ("epsilon", "budget_epsilon"):
        value = head[name]
        if not (value == "inf" or (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0)):
            return f"{name} must be a number >= 0 or \"inf\""
    delta = head["delta"]
    if not (isinstance(delta, (int, float)) and not isinstance(delta, bool) and 0 < delta < 1):
        return "delta must be a number in (0, 1)"
    for name in ("insecure_seed", "private"):
        if not isinstance(head[name], bool):
            return f"{name} must be true or false"
    return None


def signed_head_message(head: Any) -> bytes:
    """The exact bytes of a v2 head's signature: the SIGNED_HEAD_FIELDS, versioned, canonical."""
    from ndae.privacy.ledger import canonical_json

    return canonical_json({"version": HEAD_V2, **{name: head[name] for name in SIGNED_HEAD_FIELDS}}).encode("utf-8")


def sign_signed_head(key: Ed25519PrivateKey, head: dict) -> str:
    """Base64 Ed25519 signature of `signed_head_message(head)` (NdaeError for a malformed head)."""
    problem = signed_head_problem(head)
    if problem:
        raise NdaeError(f"cannot sign ledger head: {problem}")
    return base64.b64encode(key.sign(signed_head_message(head))).decode("ascii")


def verify_signed_head(public_key_pem: str, head: Any, signature: Any) -> bool:
    """True only for a valid signature by this key of exactly this v2 head (every signed field);
    False for anything else (never raises)."""
    try:
        if signed_head_problem(head) is not None or not isinstance(signature, str):
            return False
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
        if len(raw) != 64:
            return False
        load_public_key(public_key_pem, "public key").verify(raw, signed_head_message(head))
        return True
    except Exception:  # binascii.Error, InvalidSignature, NdaeError, ...
        return False


def _check_site(site: Any) -> None:
    if not isinstance(site, str) or not site or "/" in site or "\\" in site or site.startswith("."):
        raise NdaeError(f"site name {site!r} cannot name a key file")


def _head_fields_ok(site: Any, final_hash: Any, entries: Any) -> bool:
    return (isinstance(site, str) and bool(site) and isinstance(final_hash, str)
            and _HASH.fullmatch(final_hash) is not None
            and isinstance(entries, int) and not isinstance(entries, bool) and entries >= 0)


def sign_head(key: Ed25519PrivateKey, site: str, final_hash: str, entries: int) -> str:
    """Base64 Ed25519 signature of `head_message(site, final_hash, entries)`."""
    if not _head_fields_ok(site, final_hash, entries):
        raise NdaeError(f"cannot sign ledger head: site {site!r}, final hash {final_hash!r}, entries "
                        f"{entries!r} (need a site name, 64 lowercase hex digits, an integer >= 0)")
    return base64.b64encode(key.sign(head_message(site, final_hash, entries))).decode("ascii")


def verify_head(public_key_pem: str, site: str, final_hash: str, entries: int, signature: str) -> bool:
    """True only for a valid signature of exactly this head by this key; False for anything
    else, garbage of any type included (never raises)."""
    try:
        if not _head_fields_ok(site, final_hash, entries) or not isinstance(signature, str):
            return False
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
        if len(raw) != 64:
            return False
        key = load_public_key(public_key_pem, "public key")
        key.verify(raw, head_message(site, final_hash, entries))
        return True
    except (binascii.Error, UnicodeError, NdaeError):
        return False
    except Exception:  # InvalidSignature, and anything else a malformed input provokes
        return False
