"""``mask wallet new|import|export`` and the keystore v3 files of geth, MetaMask
and eth_account: what one writes, the others open, and the daemon's loader
(maskd.identity.load_or_create) agrees on the address. Real files, real KDFs
(at the cheapest cost the floor allows), a real data-dir lock."""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner
from eth_account import Account

from maskd import cli_wallet
from maskd.cli import main
from maskd.daemon import DataDirLock
from maskd.identity import SCRYPT_MIN_N, load_or_create

NODE_PW = "node passphrase"
FILE_PW = "metamask passphrase"
KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
ADDRESS = Account.from_key(KEY).address


@pytest.fixture
def data(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def runner(monkeypatch, data):
    for name in list(os.environ):
        if name.startswith("MASK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MASK_DATA_DIR", os.fspath(data))
    monkeypatch.setenv("MASK_PASSPHRASE", NODE_PW)
    monkeypatch.setenv("MASK_IDENTITY_SCRYPT_N", str(SCRYPT_MIN_N))
    return CliRunner()


def invoke(runner, *args, **kwargs):
    return runner.invoke(main, list(args), catch_exceptions=False, **kwargs)


def write_json(path, body):
    path.write_text(json.dumps(body))
    return path


def eth_account_keystore(tmp_path, kdf="scrypt", name="UTC--key.json", **kwargs):
    """A keystore as eth_account (and so MetaMask's format) writes it."""
    iterations = SCRYPT_MIN_N if kdf == "scrypt" else 1 << 18
    return write_json(
        tmp_path / name, Account.encrypt(KEY, FILE_PW, kdf=kdf, iterations=iterations, **kwargs)
    )


def pw_file(tmp_path, text=FILE_PW):
    path = tmp_path / "file-pw.txt"
    path.write_text(text + "\nsecond line is ignored\n")
    return os.fspath(path)


def assert_error(result, *says):
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: "), result.stderr
    assert lines[1].startswith("hint: "), result.stderr
    assert "Traceback" not in result.stderr
    for text in says:
        assert text in result.stderr, (text, result.stderr)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


# --- import ------------------------------------------------------------------------


@pytest.mark.parametrize("kdf", ["scrypt", "pbkdf2"])
def test_an_eth_account_keystore_imports_and_the_daemon_loads_it(runner, tmp_path, data, kdf):
    source = eth_account_keystore(tmp_path, kdf)
    result = invoke(
        runner, "wallet", "import", os.fspath(source), "--file-passphrase-file", pw_file(tmp_path)
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ADDRESS
    account = data / "account.json"
    assert mode(account) == 0o600 and mode(data) == 0o700
    written = json.loads(account.read_text())
    # re-encrypted with the node's passphrase and scrypt N, whatever the file had
    assert written["crypto"]["kdf"] == "scrypt"
    assert written["crypto"]["kdfparams"]["n"] == SCRYPT_MIN_N
    assert bytes(Account.decrypt(written, NODE_PW)) == KEY
    identity = load_or_create(data, passphrase=NODE_PW, scrypt_n=SCRYPT_MIN_N, now=1)
    assert identity.account == ADDRESS
    assert invoke(runner, "wallet", "show").stdout.strip() == ADDRESS


def test_passphrase_from_the_environment(runner, tmp_path, data, monkeypatch):
    monkeypatch.setenv("MASK_IMPORT_PASSPHRASE", FILE_PW)
    result = invoke(runner, "wallet", "import", os.fspath(eth_account_keystore(tmp_path)), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["address"] == ADDRESS and out["keystore"] == os.fspath(data / "account.json")
    assert out["replaced"] is None


def test_passphrase_from_a_prompt_on_a_terminal(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_wallet, "_stdin_is_terminal", lambda: True)
    source = eth_account_keystore(tmp_path)
    result = invoke(runner, "wallet", "import", os.fspath(source), input=FILE_PW + "\n")
    assert result.exit_code == 0, result.output
    assert ADDRESS in result.stdout


def test_no_passphrase_and_no_terminal_is_an_error(runner, tmp_path, data):
    result = invoke(runner, "wallet", "import", os.fspath(eth_account_keystore(tmp_path)))
    assert_error(result, "no passphrase for", "MASK_IMPORT_PASSPHRASE")
    assert not (data / "account.json").exists()


def test_a_geth_keystore_with_capitalised_crypto(runner, tmp_path):
    body = Account.encrypt(KEY, FILE_PW, kdf="scrypt", iterations=SCRYPT_MIN_N)
    body["Crypto"] = body.pop("crypto")
    source = write_json(tmp_path / "UTC--geth", body)
    result = invoke(
        runner, "wallet", "import", os.fspath(source), "--file-passphrase-file", pw_file(tmp_path)
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ADDRESS


def test_a_weak_keystore_imports_at_the_nodes_cost(runner, tmp_path, data):
    body = Account.encrypt(KEY, FILE_PW, kdf="scrypt", iterations=1 << 10)  # geth --lightkdf-ish
    source = write_json(tmp_path / "light.json", body)
    result = invoke(
        runner, "wallet", "import", os.fspath(source), "--file-passphrase-file", pw_file(tmp_path)
    )
    assert result.exit_code == 0, result.output
    assert (
        json.loads((data / "account.json").read_text())["crypto"]["kdfparams"]["n"] == SCRYPT_MIN_N
    )


def test_a_wrong_file_passphrase_is_refused(runner, tmp_path, data):
    source = eth_account_keystore(tmp_path)
    result = invoke(
        runner,
        "wallet",
        "import",
        os.fspath(source),
        "--file-passphrase-file",
        pw_file(tmp_path, "nope"),
    )
    assert_error(result, "wrong passphrase for", "UTC--key.json was made with (not the node's)")
    assert not (data / "account.json").exists()


def _junk(tmp_path):
    good = Account.encrypt(KEY, FILE_PW, kdf="scrypt", iterations=SCRYPT_MIN_N)

    def variant(**changes):
        body = json.loads(json.dumps(good))
        for dotted, value in changes.items():
            node = body
            *path, last = dotted.split("__")
            for part in path:
                node = node[part]
            node[last] = value
        return json.dumps(body)

    cases = {
        "not json": ("{not json", "not JSON"),
        "a list": ("[1, 2]", "not a keystore v3"),
        "nesting bomb": ("[" * 50_000, "not JSON"),
        "too big": (" " * (70 << 10), "larger than"),
        "version 4": (variant(version=4), "not a keystore v3"),
        "version true": (variant(version=True), "not a keystore v3"),
        "no crypto": (variant(crypto=None), "no crypto section"),
        "cbc cipher": (variant(crypto__cipher="aes-128-cbc"), "cipher 'aes-128-cbc'"),
        "short iv": (variant(crypto__cipherparams__iv="00"), "iv is not 16 bytes"),
        "long ciphertext": (variant(crypto__ciphertext="00" * 64), "ciphertext is not 32 bytes"),
        "mac not hex": (variant(crypto__mac="zz" * 32), "mac is not hex"),
        "bad salt": (variant(crypto__kdfparams__salt=7), "salt is not hex"),
        "bad address": (variant(address="0xnothex"), "address field"),
        "absurd scrypt": (variant(crypto__kdfparams__n=1 << 30), "will not run"),
        "absurd pbkdf2": (
            variant(
                crypto__kdf="pbkdf2",
                crypto__kdfparams={"c": 10**12, "dklen": 32, "prf": "hmac-sha256", "salt": "00"},
            ),
            "will not run",
        ),
        "unknown kdf": (variant(crypto__kdf="argon2"), "unknown kdf"),
        "lying address": (variant(address="11" * 20), "but its key is"),
    }
    return {
        name: (write_json_text(tmp_path / f"{name}.json", text), says)
        for name, (text, says) in cases.items()
    }


def write_json_text(path, text):
    path.write_text(text)
    return path


def test_junk_files_are_refused_with_a_reason(runner, tmp_path, data):
    for name, (path, says) in _junk(tmp_path).items():
        result = invoke(
            runner, "wallet", "import", os.fspath(path), "--file-passphrase-file", pw_file(tmp_path)
        )
        assert_error(result, says)
        assert not (data / "account.json").exists(), name


def test_not_a_file(runner, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_error(invoke(runner, "wallet", "import", os.fspath(fifo)), "not a regular file")
    assert_error(
        invoke(runner, "wallet", "import", os.fspath(tmp_path / "missing.json")), "does not exist"
    )


def test_an_existing_account_is_kept_without_force(runner, tmp_path, data):
    assert invoke(runner, "wallet", "new").exit_code == 0
    before = (data / "account.json").read_bytes()
    source = eth_account_keystore(tmp_path)
    result = invoke(
        runner, "wallet", "import", os.fspath(source), "--file-passphrase-file", pw_file(tmp_path)
    )
    assert_error(result, "already holds an account", "--force")
    assert (data / "account.json").read_bytes() == before
    forced = invoke(
        runner,
        "wallet",
        "import",
        os.fspath(source),
        "--file-passphrase-file",
        pw_file(tmp_path),
        "--force",
    )
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.strip() == ADDRESS
    backups = list(data.glob("account.json.replaced-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == before and mode(backups[0]) == 0o600
    assert load_or_create(data, passphrase=NODE_PW, scrypt_n=SCRYPT_MIN_N, now=1).account == ADDRESS


def test_import_and_new_refuse_while_the_daemon_runs(runner, tmp_path, data):
    data.mkdir()
    lock = DataDirLock(data)
    lock.acquire()
    try:
        source = eth_account_keystore(tmp_path)
        result = invoke(
            runner,
            "wallet",
            "import",
            os.fspath(source),
            "--file-passphrase-file",
            pw_file(tmp_path),
        )
        assert_error(
            result, f"maskd (pid {os.getpid()}) is running on {data}", f"`kill {os.getpid()}`"
        )
        assert_error(invoke(runner, "wallet", "new"), "is running")
    finally:
        lock.release()
    assert not (data / "account.json").exists()


# --- new -----------------------------------------------------------------------------


def test_new_makes_a_keystore_the_daemon_opens(runner, data):
    result = invoke(runner, "wallet", "new")
    assert result.exit_code == 0, result.output
    address = result.stdout.strip()
    account = data / "account.json"
    assert mode(account) == 0o600
    assert json.loads(account.read_text())["crypto"]["kdfparams"]["n"] == SCRYPT_MIN_N
    assert load_or_create(data, passphrase=NODE_PW, scrypt_n=SCRYPT_MIN_N, now=1).account == address
    assert invoke(runner, "wallet", "show").stdout.strip() == address
    again = invoke(runner, "wallet", "new")
    assert_error(again, "already holds an account")
    forced = invoke(runner, "wallet", "new", "--force")
    assert forced.exit_code == 0 and forced.stdout.strip() != address
    assert "the old keystore is kept as" in forced.stderr


def test_new_needs_a_passphrase_like_the_daemon(runner, data, monkeypatch, tmp_path):
    monkeypatch.delenv("MASK_PASSPHRASE")
    assert_error(
        invoke(runner, "wallet", "new"), "no passphrase for the account keystore", "MASK_PASSPHRASE"
    )
    assert not (data / "account.json").exists()
    # identity.passphrase_file, as the daemon reads it (first line)
    config = tmp_path / "node.toml"
    config.write_text(f'[identity]\npassphrase_file = "{pw_file(tmp_path, "from a file")}"\n')
    result = invoke(runner, "wallet", "new", "--config", os.fspath(config))
    assert result.exit_code == 0, result.output
    keyfile = json.loads((data / "account.json").read_text())
    assert (
        Account.from_key(Account.decrypt(keyfile, "from a file")).address == result.stdout.strip()
    )


def test_new_on_a_devnet_may_use_an_empty_passphrase(runner, data, monkeypatch):
    monkeypatch.delenv("MASK_PASSPHRASE")
    monkeypatch.setenv("MASK_IDENTITY_ALLOW_EMPTY_PASSPHRASE", "true")
    result = invoke(runner, "wallet", "new", "--data-dir", os.fspath(data / "dev"))
    assert result.exit_code == 0, result.output
    keyfile = json.loads((data / "dev" / "account.json").read_text())
    assert Account.from_key(Account.decrypt(keyfile, "")).address == result.stdout.strip()


# --- export --------------------------------------------------------------------------


def test_export_decrypts_with_eth_account(runner, tmp_path, data):
    address = invoke(runner, "wallet", "new").stdout.strip()
    out = tmp_path / "backup.json"
    result = invoke(runner, "wallet", "export", "-o", os.fspath(out))
    assert result.exit_code == 0, result.output
    assert address in result.stdout
    assert mode(out) == 0o600
    assert Account.from_key(Account.decrypt(out.read_text(), NODE_PW)).address == address
    # and it imports back, elsewhere, with the node's passphrase as the file's
    other = tmp_path / "other"
    back = invoke(
        runner,
        "wallet",
        "import",
        os.fspath(out),
        "--data-dir",
        os.fspath(other),
        "--file-passphrase-file",
        pw_file(tmp_path, NODE_PW),
    )
    assert back.exit_code == 0, back.output
    assert back.stdout.strip() == address


def test_export_refuses_to_overwrite_without_force(runner, tmp_path):
    invoke(runner, "wallet", "new")
    out = tmp_path / "backup.json"
    out.write_text("precious")
    assert_error(invoke(runner, "wallet", "export", "-o", os.fspath(out)), "exists", "--force")
    assert out.read_text() == "precious"
    result = invoke(runner, "wallet", "export", "-o", os.fspath(out), "--force")
    assert result.exit_code == 0, result.output
    assert mode(out) == 0o600 and Account.decrypt(out.read_text(), NODE_PW)


def test_export_re_encrypts_a_weak_keystore(runner, tmp_path, data):
    data.mkdir(mode=0o700)
    write_json(data / "account.json", Account.encrypt(KEY, NODE_PW, kdf="pbkdf2", iterations=1000))
    out = tmp_path / "backup.json"
    assert invoke(runner, "wallet", "export", "-o", os.fspath(out)).exit_code == 0
    exported = json.loads(out.read_text())
    assert (
        exported["crypto"]["kdf"] == "scrypt"
        and exported["crypto"]["kdfparams"]["n"] == SCRYPT_MIN_N
    )
    assert bytes(Account.decrypt(exported, NODE_PW)) == KEY


def test_export_errors(runner, tmp_path, data, monkeypatch):
    out = tmp_path / "backup.json"
    assert_error(invoke(runner, "wallet", "export", "-o", os.fspath(out)), "no account keystore")
    invoke(runner, "wallet", "new")
    monkeypatch.setenv("MASK_PASSPHRASE", "not the node's")
    assert_error(
        invoke(runner, "wallet", "export", "-o", os.fspath(out)),
        "wrong passphrase",
        "MASK_PASSPHRASE",
    )
    assert not out.exists()
    monkeypatch.setenv("MASK_PASSPHRASE", NODE_PW)
    missing_dir = tmp_path / "no" / "such" / "dir.json"
    assert_error(invoke(runner, "wallet", "export", "-o", os.fspath(missing_dir)), "cannot write")
