"""The node's keys: created on first start, reused after, never silently replaced.

Files in the data dir, each mode 0600 and written atomically:

- ``peer.key``: the Ed25519 libp2p key, as go-libp2p writes it (protobuf
  ``PrivateKey{Type: Ed25519, Data: seed || public key}``).
- ``account.json``: the Ethereum account key, a keystore v3 JSON file (scrypt)
  that geth and MetaMask import.

The X25519 key that payloads are encrypted to is derived from the peer key's
seed (HKDF), so it needs no file of its own and changes only with the peer id.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from protocol.errors import IdentityError
from protocol.identity import make_identity_record, peer_id_from_ed25519
from protocol.messages import IdentityRecord
from storage.crypto import x25519_from_seed as derive_x25519

PEER_KEY_FILE = "peer.key"
ACCOUNT_FILE = "account.json"
_PB_PREFIX = bytes([0x08, 0x01, 0x12, 0x40])  # Type=Ed25519, Data=<64 bytes>


@dataclass(frozen=True)
class NodeIdentity:
    peer_seed: bytes
    peer_key: Ed25519PrivateKey
    peer_id: str
    account_key: bytes
    account: str
    x25519_private: X25519PrivateKey
    x25519_public: bytes
    record: IdentityRecord


def x25519_from_seed(seed: bytes) -> X25519PrivateKey:
    """The payload-encryption key, derived from the peer key (storage.crypto's rule)."""
    private, _public = derive_x25519(seed)
    return X25519PrivateKey.from_private_bytes(private)


def read_passphrase(passphrase_file: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if passphrase_file:
        try:
            text = Path(passphrase_file).expanduser().read_text()
        except OSError as exc:
            raise IdentityError(
                f"cannot read the passphrase file {passphrase_file}: {exc.strerror}",
                hint="fix identity.passphrase_file or set MASK_PASSPHRASE",
            ) from None
        return text.splitlines()[0] if text else ""
    return env.get("MASK_PASSPHRASE", "")


def load_or_create(data_dir: Path, *, passphrase: str, scrypt_n: int, now: int) -> NodeIdentity:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    seed = _load_or_create_peer_key(data_dir / PEER_KEY_FILE)
    account_key = _load_or_create_account(data_dir / ACCOUNT_FILE, passphrase, scrypt_n)
    peer_key = Ed25519PrivateKey.from_private_bytes(seed)
    pub = peer_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    peer_id = peer_id_from_ed25519(pub)
    xpriv = x25519_from_seed(seed)
    xpub = xpriv.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    record = make_identity_record(account_key, peer_id, xpub, now)
    return NodeIdentity(
        peer_seed=seed,
        peer_key=peer_key,
        peer_id=peer_id,
        account_key=account_key,
        account=record.account,
        x25519_private=xpriv,
        x25519_public=xpub,
        record=record,
    )


def _write_private(path: Path, data: bytes) -> None:
    """Atomic create with mode 0600 from the first byte: temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _corrupt(path: Path, why: str) -> IdentityError:
    return IdentityError(
        f"key file {path} is corrupt: {why}",
        hint=(
            "restore it from a backup; or move it away to create a NEW identity "
            "(a new peer id / account: funds and reputation stay with the old one)"
        ),
        code="key_corrupt",
    )


def _load_or_create_peer_key(path: Path) -> bytes:
    if path.exists():
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise IdentityError(
                f"cannot read {path}: {exc.strerror}", hint="check its permissions"
            ) from None
        if len(raw) == 68 and raw.startswith(_PB_PREFIX):
            seed, pub = raw[4:36], raw[36:]
            key = Ed25519PrivateKey.from_private_bytes(seed)
            derived = key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            if derived != pub:
                raise _corrupt(path, "its public half does not match its private half")
            return seed
        raise _corrupt(path, f"expected a 68-byte Ed25519 libp2p key, found {len(raw)} bytes")
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    _write_private(path, _PB_PREFIX + seed + pub)
    return seed


def _load_or_create_account(path: Path, passphrase: str, scrypt_n: int) -> bytes:
    if path.exists():
        try:
            keyfile = json.loads(path.read_text())
        except OSError as exc:
            raise IdentityError(
                f"cannot read {path}: {exc.strerror}", hint="check its permissions"
            ) from None
        except ValueError as exc:
            raise _corrupt(path, f"not JSON ({exc})") from None
        if not isinstance(keyfile, dict) or keyfile.get("version") != 3 or "crypto" not in keyfile:
            raise _corrupt(path, "not a keystore v3 file")
        try:
            return bytes(Account.decrypt(keyfile, passphrase))
        except ValueError as exc:
            if "MAC mismatch" in str(exc):
                raise IdentityError(
                    f"wrong passphrase for the account keystore {path}",
                    hint="set MASK_PASSPHRASE or identity.passphrase_file to the passphrase it was made with",
                    code="wrong_passphrase",
                ) from None
            raise _corrupt(path, str(exc)) from None
        except Exception as exc:
            raise _corrupt(path, f"{type(exc).__name__}: {exc}") from None
    key = secrets.token_bytes(32)
    keyfile = Account.encrypt(key, passphrase, kdf="scrypt", iterations=scrypt_n)
    _write_private(path, json.dumps(keyfile).encode())
    return key
