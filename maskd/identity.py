"""The node's keys: created on first start, reused after, never silently replaced.

Files in the data dir, each mode 0600 and written atomically:

- ``peer.key``: the Ed25519 libp2p key, as go-libp2p writes it (protobuf
  ``PrivateKey{Type: Ed25519, Data: seed || public key}``).
- ``account.json``: the Ethereum account key, a keystore v3 JSON file (scrypt)
  that geth and MetaMask import.

The keystore's KDF has a floor (scrypt N >= 2**14, r >= 8, p >= 1) when it is
made and when it is loaded: a keystore found weaker than that (an imported
"light" one, one made by an older maskd) is re-encrypted in place with the
configured cost once the passphrase has opened it, and a warning is logged.
Parameters past a ceiling (more than 4 GiB of scrypt memory, say) are refused
before the KDF runs: a key file is not a reason to exhaust the machine. Whether
an empty passphrase is acceptable is the node's policy (``load_node_identity``:
devnets only), not this module's mechanism.

The X25519 key that payloads are encrypted to is derived from the peer key's
seed (HKDF), so it needs no file of its own and changes only with the peer id.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from protocol.errors import IdentityError
from protocol.identity import make_identity_record, peer_id_from_ed25519
from protocol.messages import IdentityRecord
from storage.crypto import x25519_from_seed as derive_x25519

log = logging.getLogger("maskd.identity")

PEER_KEY_FILE = "peer.key"
ACCOUNT_FILE = "account.json"
_PB_PREFIX = bytes([0x08, 0x01, 0x12, 0x40])  # Type=Ed25519, Data=<64 bytes>

#: The weakest KDF a keystore may have. scrypt N = 2**14 with r = 8 is 16 MiB
#: and ~50 ms per guess; geth's default (2**18) is 16 times that.
SCRYPT_MIN_N = 1 << 14
SCRYPT_MIN_R = 8
SCRYPT_MIN_P = 1
PBKDF2_MIN_C = 1 << 18  # geth's pbkdf2 default
#: The costliest KDF we agree to run on a key file: past these the file is refused.
SCRYPT_MAX_N = 1 << 22
SCRYPT_MAX_R = 64
SCRYPT_MAX_P = 16
SCRYPT_MAX_MEMORY = 4 << 30  # 128 * N * r bytes
SCRYPT_MAX_WORK = 1 << 26  # N * r * p: about 4 s of hashing at geth's defaults x16
PBKDF2_MAX_C = 10_000_000


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


def node_passphrase(cfg: Any, *, env: Mapping[str, str] | None = None) -> str:
    """The account keystore's passphrase, under the config's policy.

    Outside a devnet (``identity.allow_empty_passphrase = false``, the default)
    an empty passphrase is refused, for a new keystore and for an existing one:
    a keystore anyone can open protects nothing. The daemon and ``mask wallet``
    read it here, so both open the same keystore the same way.
    """
    passphrase = read_passphrase(cfg.identity.passphrase_file, env)
    if not passphrase and not cfg.identity.allow_empty_passphrase:
        raise IdentityError(
            "no passphrase for the account keystore: without one, anyone who can read "
            f"{cfg.data_path / ACCOUNT_FILE} has the account key",
            hint=(
                "set MASK_PASSPHRASE, or point identity.passphrase_file at a file (mode 0600) "
                "whose first line is the passphrase; a throw-away devnet node may set "
                "identity.allow_empty_passphrase = true instead"
            ),
            code="passphrase_required",
        )
    return passphrase


def load_node_identity(cfg: Any, *, env: Mapping[str, str] | None = None, now: int) -> NodeIdentity:
    """The daemon's keys, under the config's policy (``cfg`` is a ``maskd.config.Config``;
    the passphrase rule is :func:`node_passphrase`'s)."""
    passphrase = node_passphrase(cfg, env=env)
    return load_or_create(
        cfg.data_path, passphrase=passphrase, scrypt_n=cfg.identity.scrypt_n, now=now
    )


def load_or_create(data_dir: Path, *, passphrase: str, scrypt_n: int, now: int) -> NodeIdentity:
    """Load the node's keys, or create them on first start.

    ``scrypt_n`` is the cost of a new keystore (and of one re-encrypted because it
    was weaker than the floor); below ``SCRYPT_MIN_N`` it is refused. The
    passphrase is used as given: the caller decides whether an empty one is
    acceptable (``load_node_identity``).
    """
    check_scrypt_n(scrypt_n)
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


def check_scrypt_n(scrypt_n: int) -> None:
    """Refuse a scrypt cost for a new keystore outside the floor and the ceiling."""
    if not SCRYPT_MIN_N <= scrypt_n <= SCRYPT_MAX_N or scrypt_n & (scrypt_n - 1):
        raise IdentityError(
            f"scrypt N = {scrypt_n} is out of range for a keystore",
            hint=f"use a power of two from {SCRYPT_MIN_N} to {SCRYPT_MAX_N} "
            "(identity.scrypt_n; 262144 is geth's default)",
            code="keystore_weak",
        )


def encrypt_account_key(key: bytes, passphrase: str, scrypt_n: int) -> bytes:
    """``key`` as keystore v3 JSON (scrypt N = ``scrypt_n``, r = 8, p = 1), ready to write.

    The one place account keystores are made (the daemon's, ``mask wallet new``
    and ``import``), so all of them meet the floor.
    """
    check_scrypt_n(scrypt_n)
    keyfile = Account.encrypt(key, passphrase, kdf="scrypt", iterations=scrypt_n)
    return json.dumps(keyfile).encode()


def check_keystore_kdf(path: Path, crypto: Any) -> str:
    """A keystore's ``crypto`` section: raises ``keystore_params`` for a KDF this node
    will not run; returns a description if it is below the floor, else ''."""
    return _check_kdf(path, crypto)


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
        weak = _check_kdf(path, keyfile["crypto"])
        try:
            key = bytes(Account.decrypt(keyfile, passphrase))
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
        if weak:
            _write_keystore(path, key, passphrase, scrypt_n)
            log.warning(
                "the account keystore %s used a weak KDF (%s): re-encrypted it in place "
                "with scrypt N=%d, r=%d, p=%d (same key, same address)",
                path,
                weak,
                scrypt_n,
                SCRYPT_MIN_R,
                SCRYPT_MIN_P,
            )
        return key
    key = secrets.token_bytes(32)
    _write_keystore(path, key, passphrase, scrypt_n)
    return key


def _write_keystore(path: Path, key: bytes, passphrase: str, scrypt_n: int) -> None:
    _write_private(path, encrypt_account_key(key, passphrase, scrypt_n))


def _check_kdf(path: Path, crypto: Any) -> str:
    """Refuse KDF parameters we will not run; describe them if below the floor, else ''."""

    def refuse(why: str) -> IdentityError:
        return IdentityError(
            f"the account keystore {path} has KDF parameters this node will not run: {why}",
            hint=(
                "it was not made by maskd or geth; re-encrypt the key with standard "
                "parameters (scrypt N=262144, r=8, p=1), or restore the file from a backup"
            ),
            code="keystore_params",
        )

    params = crypto.get("kdfparams") if isinstance(crypto, dict) else None
    kdf = crypto.get("kdf") if isinstance(crypto, dict) else None
    if not isinstance(params, dict):
        raise refuse("no kdfparams")

    def whole(name: str) -> int:
        value = params.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise refuse(f"{name} = {value!r} is not a positive integer")
        return value

    if whole("dklen") != 32:  # the AES key and the MAC key, 16 bytes each
        raise refuse(f"dklen = {params['dklen']} (32 expected)")
    if kdf == "scrypt":
        n, r, p = whole("n"), whole("r"), whole("p")
        if n < 2 or n & (n - 1):
            raise refuse(f"N = {n} is not a power of two")
        if (
            n > SCRYPT_MAX_N
            or r > SCRYPT_MAX_R
            or p > SCRYPT_MAX_P
            or 128 * n * r > SCRYPT_MAX_MEMORY
            or n * r * p > SCRYPT_MAX_WORK
        ):
            raise refuse(f"scrypt N={n}, r={r}, p={p} costs more than this node will spend")
        if n < SCRYPT_MIN_N or r < SCRYPT_MIN_R or p < SCRYPT_MIN_P:
            return f"scrypt N={n}, r={r}, p={p}"
        return ""
    if kdf == "pbkdf2":
        c = whole("c")
        if c > PBKDF2_MAX_C:
            raise refuse(f"pbkdf2 c = {c} costs more than this node will spend")
        return f"pbkdf2 c={c}" if c < PBKDF2_MIN_C else ""
    raise refuse(f"unknown kdf {kdf!r} (scrypt or pbkdf2)")
