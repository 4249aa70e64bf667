"""Signing the record chain: an ed25519 key of the user's, kept outside the database.

When the key file exists (``$RANKSCOPE_CHAIN_KEY``, else ``chain-signing-key.pem`` in the user's
config folder, e.g. ``~/.config/rankscope/``), every link the store appends to a record chain
carries the key's id and its signature of the link's chain value (:mod:`.chain`). Someone who can
write to the database but does not hold the key can then change a record and recompute the chain,
but cannot sign the new links: the audit reports the signatures that no longer verify, and links
left unsigned after signed ones. ``rankscope chain-key --new`` makes the key.

Signatures are checked with the public keys of :func:`trusted_keys`: the user's own and any
``*.pem`` public key in the ``trusted-keys`` folder beside it (a colleague's, for a shared store).
"""

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from rankscope.experiments_db.errors import StoreError

ENV_CHAIN_KEY = "RANKSCOPE_CHAIN_KEY"
KEY_FILE = "chain-signing-key.pem"
TRUSTED_DIR = "trusted-keys"


class SigningKeyError(StoreError):
    """The signing key file cannot be used (unreadable, not an ed25519 key, or already there)."""


def config_dir() -> Path:
    """The user's RankScope config folder (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_config_dir("rankscope", appauthor=False))


def key_path() -> Path:
    """Where the signing key is (or would be) kept."""
    env = os.environ.get(ENV_CHAIN_KEY)
    return Path(env).expanduser() if env else config_dir() / KEY_FILE


def key_id_of(public: Ed25519PublicKey) -> str:
    """A key's id: the first 32 hex digits of the sha256 of its raw public bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def message(investigation_id: int, seq: int, chain: str) -> bytes:
    """What a link's signature covers: its place (investigation, position) and chain value."""
    return f"rankscope-record-chain/1|{investigation_id}|{seq}|{chain}".encode()


@dataclass(frozen=True)
class Signer:
    """The user's signing key."""

    key: Ed25519PrivateKey
    key_id: str
    path: Path

    def sign(self, investigation_id: int, seq: int, chain: str) -> str:
        return self.key.sign(message(investigation_id, seq, chain)).hex()

    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> Signer:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise SigningKeyError(f"cannot read the signing key {path}: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the signing key {path} is not an ed25519 key")
    return Signer(key, key_id_of(key.public_key()), Path(path))


def current_signer() -> Signer | None:
    """The user's signing key, or None when there is none (links are then not signed)."""
    path = key_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _load(str(path), mtime)


def create_key(path: Path | None = None) -> Signer:
    """Make a new signing key (readable by the user only); refuses to replace one."""
    path = path or key_path()
    if path.exists():
        raise SigningKeyError(f"a signing key already exists at {path}; it was left as it is")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    signer = current_signer() if path == key_path() else None
    return signer or Signer(key, key_id_of(key.public_key()), path)


def trusted_keys() -> dict[str, Ed25519PublicKey]:
    """The public keys signatures are checked with, by key id: the user's own key and the
    ``*.pem`` public keys in the ``trusted-keys`` folder beside it."""
    keys: dict[str, Ed25519PublicKey] = {}
    signer = current_signer()
    if signer is not None:
        keys[signer.key_id] = signer.key.public_key()
    folder = key_path().parent / TRUSTED_DIR
    for pem in sorted(folder.glob("*.pem")) if folder.is_dir() else ():
        try:
            public = serialization.load_pem_public_key(pem.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(public, Ed25519PublicKey):
            keys[key_id_of(public)] = public
    return keys


def verifies(
    public: Ed25519PublicKey, signature: str, investigation_id: int, seq: int, chain: str
) -> bool:
    """Whether ``signature`` (hex) is ``public``'s signature of the link."""
    try:
        public.verify(bytes.fromhex(signature), message(investigation_id, seq, chain))
    except (InvalidSignature, ValueError):
        return False
    return True
