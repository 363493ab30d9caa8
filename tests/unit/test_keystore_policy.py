"""The account keystore outside devnets: a passphrase is required, and scrypt
parameters have a floor when a keystore is made and when one is loaded."""

from __future__ import annotations

import json
import logging
import os
import stat

import eth_keyfile.keyfile
import pytest
from eth_account import Account

from maskd.config import load_config
from maskd.identity import (
    ACCOUNT_FILE,
    SCRYPT_MIN_N,
    load_node_identity,
    load_or_create,
)
from protocol.errors import ConfigError, IdentityError

N = SCRYPT_MIN_N  # the cheapest scrypt the floor allows
KEY = bytes(range(1, 33))
ADDRESS = Account.from_key(KEY).address


def config(tmp_path, **identity):
    return load_config(
        env={},
        overrides={"node": {"data_dir": str(tmp_path)}, "identity": {"scrypt_n": N, **identity}},
    )


def test_an_empty_passphrase_is_refused_outside_a_devnet(tmp_path):
    with pytest.raises(IdentityError) as exc:
        load_node_identity(config(tmp_path), env={}, now=1)
    assert exc.value.code == "passphrase_required"
    assert "MASK_PASSPHRASE" in exc.value.hint and "passphrase_file" in exc.value.hint
    assert not (tmp_path / ACCOUNT_FILE).exists()  # nothing unprotected was written


def test_an_empty_passphrase_is_refused_for_an_existing_keystore_too(tmp_path):
    load_or_create(tmp_path, passphrase="", scrypt_n=N, now=1)
    with pytest.raises(IdentityError) as exc:
        load_node_identity(config(tmp_path), env={}, now=1)
    assert exc.value.code == "passphrase_required"


def test_a_devnet_node_may_use_an_empty_passphrase(tmp_path):
    ident = load_node_identity(config(tmp_path, allow_empty_passphrase=True), env={}, now=1)
    again = load_node_identity(config(tmp_path, allow_empty_passphrase=True), env={}, now=2)
    assert ident.account == again.account


def test_a_passphrase_from_the_environment_or_a_file_is_used(tmp_path):
    a = load_node_identity(config(tmp_path), env={"MASK_PASSPHRASE": "pw"}, now=1)
    pw = tmp_path / "pw.txt"
    pw.write_text("pw\n")
    b = load_node_identity(config(tmp_path, passphrase_file=str(pw)), env={}, now=2)
    assert a.account == b.account


def test_the_devnet_config_allows_an_empty_passphrase_and_the_default_does_not():
    from maskd.devnet import devnet_config_path

    assert load_config(devnet_config_path(), env={}).identity.allow_empty_passphrase is True
    assert load_config(env={}).identity.allow_empty_passphrase is False


@pytest.mark.parametrize("n", [2, 1024, N // 2])
def test_a_weak_scrypt_cost_is_refused_when_creating(tmp_path, n):
    with pytest.raises(IdentityError) as exc:
        load_or_create(tmp_path, passphrase="pw", scrypt_n=n, now=1)
    assert exc.value.code == "keystore_weak" and exc.value.hint
    assert not (tmp_path / ACCOUNT_FILE).exists()


@pytest.mark.parametrize("n", [2, 1024, 8192])
def test_the_config_refuses_a_weak_scrypt_cost(tmp_path, n):
    with pytest.raises(ConfigError) as exc:
        load_config(env={"MASK_IDENTITY_SCRYPT_N": str(n)})
    assert "identity.scrypt_n" in exc.value.message and exc.value.hint


def write_keystore(tmp_path, keyfile: dict) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    load_or_create(tmp_path, passphrase="pw", scrypt_n=N, now=1)  # the peer key
    (tmp_path / ACCOUNT_FILE).write_text(json.dumps(keyfile))


def weak_scrypt(monkeypatch, *, n=N, r=8, p=1) -> dict:
    monkeypatch.setattr(eth_keyfile.keyfile, "SCRYPT_R", r)
    monkeypatch.setattr(eth_keyfile.keyfile, "SCRYPT_P", p)
    try:
        return Account.encrypt(KEY, "pw", kdf="scrypt", iterations=n)
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize(
    "params",
    [{"n": 2}, {"n": 1024}, {"r": 1}, {"r": 4}],
    ids=["n=2", "n=1024", "r=1", "r=4"],
)
def test_loading_a_weak_scrypt_keystore_re_encrypts_it(tmp_path, monkeypatch, caplog, params):
    write_keystore(tmp_path, weak_scrypt(monkeypatch, **params))
    with caplog.at_level(logging.WARNING, logger="maskd"):
        ident = load_or_create(tmp_path, passphrase="pw", scrypt_n=N, now=1)
    assert ident.account == ADDRESS  # the same key
    kdf = json.loads((tmp_path / ACCOUNT_FILE).read_text())["crypto"]["kdfparams"]
    assert (kdf["n"], kdf["r"], kdf["p"]) == (N, 8, 1)
    assert stat.S_IMODE(os.stat(tmp_path / ACCOUNT_FILE).st_mode) == 0o600
    assert any("re-encrypted" in r.getMessage() for r in caplog.records)
    again = load_or_create(tmp_path, passphrase="pw", scrypt_n=N, now=2)
    assert again.account == ADDRESS


def test_loading_a_weak_pbkdf2_keystore_re_encrypts_it_with_scrypt(tmp_path):
    write_keystore(tmp_path, Account.encrypt(KEY, "pw", kdf="pbkdf2", iterations=1000))
    ident = load_or_create(tmp_path, passphrase="pw", scrypt_n=N, now=1)
    assert ident.account == ADDRESS
    assert json.loads((tmp_path / ACCOUNT_FILE).read_text())["crypto"]["kdf"] == "scrypt"


def test_a_weak_keystore_with_a_wrong_passphrase_is_left_alone(tmp_path, monkeypatch):
    keyfile = weak_scrypt(monkeypatch, n=1024)
    write_keystore(tmp_path, keyfile)
    with pytest.raises(IdentityError) as exc:
        load_or_create(tmp_path, passphrase="wrong", scrypt_n=N, now=1)
    assert exc.value.code == "wrong_passphrase"
    assert json.loads((tmp_path / ACCOUNT_FILE).read_text()) == keyfile


@pytest.mark.parametrize(
    "kdfparams",
    [
        {"n": 1 << 30, "r": 8, "p": 1},  # 128 GiB of scrypt memory
        {"n": 1 << 14, "r": 1 << 20, "p": 1},
        {"n": 1 << 14, "r": 8, "p": 1 << 20},
        {"n": 1000, "r": 8, "p": 1},  # not a power of two
        {"n": "many", "r": 8, "p": 1},
        {"n": True, "r": 8, "p": 1},
    ],
)
def test_a_keystore_whose_kdf_parameters_are_absurd_is_refused_without_running_it(
    tmp_path, monkeypatch, kdfparams
):
    keyfile = Account.encrypt(KEY, "pw", kdf="scrypt", iterations=N)
    keyfile["crypto"]["kdfparams"].update(kdfparams)
    write_keystore(tmp_path, keyfile)

    def no_kdf(*args, **kwargs):
        raise AssertionError("the KDF must not run on these parameters")

    monkeypatch.setattr(Account, "decrypt", no_kdf)
    with pytest.raises(IdentityError) as exc:
        load_or_create(tmp_path, passphrase="pw", scrypt_n=N, now=1)
    assert exc.value.code == "keystore_params" and exc.value.hint
    assert json.loads((tmp_path / ACCOUNT_FILE).read_text()) == keyfile


def test_an_unknown_kdf_is_refused(tmp_path, monkeypatch):
    keyfile = Account.encrypt(KEY, "pw", kdf="scrypt", iterations=N)
    keyfile["crypto"]["kdf"] = "argon2"
    write_keystore(tmp_path, keyfile)
    with pytest.raises(IdentityError) as exc:
        load_or_create(tmp_path, passphrase="pw", scrypt_n=N, now=1)
    assert exc.value.code == "keystore_params"


@pytest.mark.parametrize("dklen", [16, 1 << 30, 0])
def test_a_keystore_with_an_odd_key_length_is_refused(tmp_path, monkeypatch, dklen):
    keyfile = Account.encrypt(KEY, "pw", kdf="scrypt", iterations=N)
    keyfile["crypto"]["kdfparams"]["dklen"] = dklen
    write_keystore(tmp_path, keyfile)
    monkeypatch.setattr(Account, "decrypt", None)
    with pytest.raises(IdentityError) as exc:
        load_or_create(tmp_path, passphrase="pw", scrypt_n=N, now=1)
    assert exc.value.code == "keystore_params"
