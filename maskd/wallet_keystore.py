"""The keystore files ``mask wallet`` reads and writes, with the daemon stopped.

``account.json`` in the data dir is the node's account key (keystore v3,
scrypt, the node's passphrase: see :mod:`maskd.identity`). ``mask wallet
new``/``import``/``export`` change or copy it while no daemon runs: the daemon
reads the key once at start, so a key changed under a running one would keep
signing with the old key while the file says otherwise. The data dir's lock
(the one ``maskd`` holds for its lifetime) is held while they write, so a
daemon cannot start half-way through either. Nothing is lost: a replaced
account is kept beside the new one, and no write clobbers a file unless asked.

A keystore from elsewhere is hostile input until it decrypts: its size is
bounded, its shape checked, its KDF parameters refused past the ceiling
before the KDF runs (identity.py's rule), its cipher must be the one keystore
v3 defines (eth_account does not check: another cipher would "decrypt" to a
wrong key whose MAC still matches), and the address it claims must be its
key's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from protocol.errors import IdentityError, MaskError

__all__ = [
    "MAX_KEYSTORE_BYTES",
    "account_exists",
    "account_path",
    "claimed_address",
    "daemon_stopped",
    "decrypt_keystore",
    "ensure_data_dir",
    "file_exists",
    "install_account",
    "keystore_error",
    "no_account",
    "read_keystore",
    "running_pid",
    "write_private",
]

# A keystore v3 file is ~500 bytes; anything near this is not one.
MAX_KEYSTORE_BYTES = 64 << 10
_ADDRESS = re.compile(r"(?:0x)?([0-9a-fA-F]{40})")
_HEX = re.compile(r"(?:0x)?(?:[0-9a-fA-F]{2})+")


def running_pid(data: Path) -> str | None:
    """The pid of a daemon holding ``data``'s lock, or None: a probe that creates nothing."""
    try:
        fd = os.open(data / "maskd.lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


def ensure_data_dir(data: Path) -> None:
    try:
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(
            f"cannot use the data dir {data}: {exc.strerror or exc}",
            hint="check the path and its parent's permissions, or pass another --data-dir",
            code="data_dir_invalid",
        ) from None
    if data.stat().st_uid != os.geteuid():
        raise IdentityError(
            f"the data dir {data} belongs to another user",
            hint="run mask as the user who runs maskd there",
            code="data_dir_not_ours",
        )


@contextlib.contextmanager
def daemon_stopped(data: Path, doing: str) -> Iterator[None]:
    """Hold the data dir's lock (a daemon holds it while it runs) for a keystore change."""
    from maskd.daemon import DataDirLock

    lock = DataDirLock(data)
    try:
        lock.acquire()
    except OSError as exc:
        raise IdentityError(
            f"cannot lock the data dir {data}: {exc.strerror or exc}",
            hint="check its permissions: maskd.lock must be writable by this user",
            code="data_dir_invalid",
        ) from None
    except MaskError as exc:
        if exc.code != "daemon_running":
            raise
        pid = running_pid(data) or "?"
        raise IdentityError(
            f"maskd (pid {pid}) is running on {data}: {doing} needs it stopped "
            "(it holds the key it loaded at start)",
            hint=f"stop it (`kill {pid}`), run this again, then start maskd",
            code="daemon_running",
        ) from None
    try:
        yield
    finally:
        lock.release()


def write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600, never clobbering unless ``replace``.

    Temp file (0600 from its first byte), fsync, then a rename (``replace``) or
    a hard link, which fails if the name exists: no window in which another
    file at ``path`` is overwritten. Where hard links are not supported the
    existence check and the rename are two steps.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if not replace:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                        raise
                    if path.exists():
                        raise FileExistsError(path) from None
                    os.replace(tmp, path)
            else:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except FileExistsError:
        raise file_exists(path) from None
    except OSError as exc:
        raise IdentityError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="check that the directory exists and is writable",
            code="write_failed",
        ) from None


def file_exists(path: Path) -> IdentityError:
    return IdentityError(
        f"{path} exists", hint="choose another name, or pass --force", code="file_exists"
    )


def keystore_error(path: Path, why: str) -> IdentityError:
    return IdentityError(
        f"{path} is not a usable keystore: {why}",
        hint="give a keystore v3 JSON file, as geth, MetaMask or eth_account write them",
        code="keystore_invalid",
    )


def _lower_keys(value: Any) -> Any:
    """geth once wrote ``Crypto``; eth_account reads keys case-blind, and so do we."""
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    return value


def read_keystore(path: Path) -> dict[str, Any]:
    """A keystore v3 file's JSON, shape-checked; no KDF has run yet."""
    try:
        # O_NONBLOCK: a FIFO given as FILE must not hang us before we see what it is.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise keystore_error(path, "not a regular file")
            raw = f.read(MAX_KEYSTORE_BYTES + 1)
            if len(raw) > MAX_KEYSTORE_BYTES:
                raise keystore_error(path, f"larger than {MAX_KEYSTORE_BYTES} bytes")
    except FileNotFoundError:
        raise IdentityError(
            f"{path} does not exist", hint="check the path", code="no_such_file"
        ) from None
    except OSError as exc:
        raise IdentityError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint="check the path and its permissions",
            code="unreadable",
        ) from None
    try:
        keyfile = json.loads(raw)
    except (ValueError, RecursionError):
        raise keystore_error(path, "not JSON") from None
    keyfile = _lower_keys(keyfile) if isinstance(keyfile, dict) else None
    if keyfile is None or keyfile.get("version") != 3 or isinstance(keyfile.get("version"), bool):
        raise keystore_error(path, "not a keystore v3 object (version 3)")
    crypto = keyfile.get("crypto")
    if not isinstance(crypto, dict):
        raise keystore_error(path, "no crypto section")
    if crypto.get("cipher") != "aes-128-ctr":
        raise keystore_error(path, f"cipher {str(crypto.get('cipher'))[:32]!r} (aes-128-ctr)")
    params = crypto.get("cipherparams")
    fields = {
        "ciphertext": (crypto.get("ciphertext"), 32),
        "mac": (crypto.get("mac"), 32),
        "iv": (params.get("iv") if isinstance(params, dict) else None, 16),
    }
    for name, (value, size) in fields.items():
        if not isinstance(value, str) or not _HEX.fullmatch(value):
            raise keystore_error(path, f"{name} is not hex")
        if len(value.removeprefix("0x")) != 2 * size:
            raise keystore_error(path, f"{name} is not {size} bytes")
    salt = (
        crypto.get("kdfparams", {}).get("salt")
        if isinstance(crypto.get("kdfparams"), dict)
        else None
    )
    if not isinstance(salt, str) or not (salt == "" or _HEX.fullmatch(salt)) or len(salt) > 1024:
        raise keystore_error(path, "kdfparams.salt is not hex")
    address = keyfile.get("address")
    if address is not None and (not isinstance(address, str) or not _ADDRESS.fullmatch(address)):
        raise keystore_error(path, "its address field is not 40 hex digits")
    return keyfile


def claimed_address(keyfile: dict[str, Any]) -> str | None:
    """The address a keystore says it holds (unauthenticated until it decrypts)."""
    from eth_utils import to_checksum_address

    m = _ADDRESS.fullmatch(str(keyfile.get("address") or ""))
    return to_checksum_address("0x" + m[1]) if m else None


def decrypt_keystore(
    path: Path, keyfile: dict[str, Any], passphrase: str, *, wrong_hint: str
) -> tuple[bytes, str, str]:
    """(key, address, weakness) of a keystore: KDF bounded first, address checked after."""
    from eth_account import Account

    from maskd.identity import check_keystore_kdf

    weak = check_keystore_kdf(path, keyfile["crypto"])
    try:
        key = bytes(Account.decrypt(keyfile, passphrase))
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise IdentityError(
                f"wrong passphrase for {path}", hint=wrong_hint, code="wrong_passphrase"
            ) from None
        raise keystore_error(path, str(exc)[:200]) from None
    except Exception as exc:
        raise keystore_error(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        address = Account.from_key(key).address
    except Exception:
        raise keystore_error(path, "what it holds is not a secp256k1 private key") from None
    claimed = claimed_address(keyfile)
    if claimed is not None and claimed != address:
        raise keystore_error(path, f"it says it holds {claimed} but its key is {address}'s")
    return key, address, weak


def account_path(cfg: Any) -> Path:
    from maskd.identity import ACCOUNT_FILE

    return cfg.data_path / ACCOUNT_FILE


def no_account(path: Path) -> IdentityError:
    return IdentityError(
        f"no account keystore at {path}",
        hint="`mask wallet new` makes one (maskd does on its first start); "
        "`mask wallet import FILE` brings one from geth or MetaMask",
        code="no_account",
    )


def account_exists(path: Path) -> IdentityError:
    return IdentityError(
        f"{path} already holds an account: replacing it would lose that key",
        hint="back it up with `mask wallet export -o FILE`, then pass --force "
        "(the old keystore is kept as account.json.replaced-<time>)",
        code="account_exists",
    )


def install_account(path: Path, data: bytes, *, force: bool, now: float) -> Path | None:
    """Write the node's keystore; with ``force`` the old one is kept beside it, never lost."""
    if not path.exists():
        write_private(path, data, replace=False)
        return None
    if not force:
        raise account_exists(path)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    backup = path.with_name(f"{path.name}.replaced-{stamp}")
    while backup.exists():
        backup = path.with_name(f"{path.name}.replaced-{stamp}-{secrets.token_hex(2)}")
    try:
        old = path.read_bytes()
    except OSError as exc:
        raise IdentityError(
            f"cannot read {path} to keep a copy: {exc.strerror or exc}",
            hint="check its permissions; nothing was changed",
            code="unreadable",
        ) from None
    write_private(backup, old, replace=False)
    write_private(path, data, replace=True)
    return backup
