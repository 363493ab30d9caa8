import json
import os
import stat

import pytest

from maskd.identity import ACCOUNT_FILE, PEER_KEY_FILE, load_or_create, read_passphrase
from protocol.errors import IdentityError
from protocol.identity import ed25519_from_peer_id, verify_identity_record

N = 16384  # the cheapest scrypt the keystore floor allows


def test_first_start_creates_keys_0600_and_later_starts_reuse_them(tmp_path):
    a = load_or_create(tmp_path, passphrase="pw", scrypt_n=N, now=1)
    for name in (PEER_KEY_FILE, ACCOUNT_FILE):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    b = load_or_create(tmp_path, passphrase="pw", scrypt_n=N, now=2)
    assert (a.peer_id, a.account, a.x25519_public) == (b.peer_id, b.account, b.x25519_public)
    assert a.peer_id.startswith("12D3KooW")
    assert verify_identity_record(b.record) and b.record.peer_id == b.peer_id
    ed25519_from_peer_id(a.peer_id)  # the id carries the key


def test_keystore_is_v3_scrypt(tmp_path):
    load_or_create(tmp_path, passphrase="", scrypt_n=N, now=1)
    ks = json.loads((tmp_path / ACCOUNT_FILE).read_text())
    assert ks["version"] == 3 and ks["crypto"]["kdf"] == "scrypt"


def test_wrong_passphrase_is_a_clear_error(tmp_path):
    load_or_create(tmp_path, passphrase="right", scrypt_n=N, now=1)
    with pytest.raises(IdentityError) as exc:
        load_or_create(tmp_path, passphrase="wrong", scrypt_n=N, now=1)
    assert exc.value.code == "wrong_passphrase" and "MASK_PASSPHRASE" in exc.value.hint


@pytest.mark.parametrize(
    "name, content",
    [
        (PEER_KEY_FILE, b"short"),
        (PEER_KEY_FILE, bytes([8, 1, 18, 64]) + b"\x01" * 64),  # halves do not match
        (ACCOUNT_FILE, b"{not json"),
        (ACCOUNT_FILE, b'{"version": 1}'),
    ],
)
def test_corrupt_key_files_are_errors_and_never_replaced(tmp_path, name, content):
    load_or_create(tmp_path, passphrase="", scrypt_n=N, now=1)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(IdentityError) as exc:
        load_or_create(tmp_path, passphrase="", scrypt_n=N, now=1)
    assert exc.value.code == "key_corrupt" and "backup" in exc.value.hint
    assert (tmp_path / name).read_bytes() == content


def test_passphrase_sources(tmp_path):
    f = tmp_path / "pw"
    f.write_text("secret\nignored\n")
    assert read_passphrase(str(f), env={"MASK_PASSPHRASE": "env"}) == "secret"
    assert read_passphrase("", env={"MASK_PASSPHRASE": "env"}) == "env"
    assert read_passphrase("", env={}) == ""
    with pytest.raises(IdentityError):
        read_passphrase(str(tmp_path / "missing"), env={})
