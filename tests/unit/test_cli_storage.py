"""``mask put|get|pin|unpin`` and ``mask blocks gc|stat`` against a real RpcServer
(in a thread) serving fake ``v1.storage.*`` handlers that record their params."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from maskd.cli import main
from maskd.rpc import RpcServer, maskd_version, serve_in_thread
from protocol.errors import StorageError

CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
PROVIDER = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
STAT = {
    "blocks": 1234,
    "bytes": 3 << 20,
    "pinned_roots": 2,
    "quota_bytes": 10 << 30,
    "backend": "local",
    "ipfs_api": None,
    "served_corrupt": 0,
    "exchange": {
        "served_blocks": 40,
        "served_bytes": 10 << 20,
        "fetched_blocks": 7,
        "fetched_bytes": 1 << 20,
        "corrupt_blocks": 1,
    },
    "replicas_hosted": 3,
}


class FakeStorage:
    """The daemon's storage methods, answering canned results; ``calls`` records
    (method, params); ``fail`` maps a method to the StorageError it raises."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail: dict[str, StorageError] = {}
        self.unpinned = True
        self.placed = 2

    def handlers(self) -> dict:
        def method(name, answer):
            async def handler(params):
                self.calls.append((name, params))
                if name in self.fail:
                    raise self.fail[name]
                return answer(params)

            return handler

        return {
            "v1.storage.put": method(
                "v1.storage.put",
                lambda p: {
                    "cid": CID,
                    "size": 5 << 20,
                    "blocks": 21,
                    "encrypted_to": p.get("encrypt_to"),
                },
            ),
            "v1.storage.get": method(
                "v1.storage.get",
                lambda p: {
                    "cid": p["cid"],
                    "dest": p["dest"],
                    "size": 5 << 20,
                    "fetched_blocks": 21,
                    "fetched_bytes": 5 << 20,
                    "peers_used": {PROVIDER: 21},
                    "peers_dropped": {},
                    "fetch_s": 0.5,
                    "export_s": 0.1,
                },
            ),
            "v1.storage.pin": method("v1.storage.pin", lambda p: {"cid": p["cid"], "pinned": True}),
            "v1.storage.unpin": method(
                "v1.storage.unpin", lambda p: {"cid": p["cid"], "unpinned": self.unpinned}
            ),
            "v1.storage.gc": method("v1.storage.gc", lambda p: {"blocks": 3, "bytes": 1 << 20}),
            "v1.storage.stat": method("v1.storage.stat", lambda p: STAT),
            "v1.storage.replicate": method(
                "v1.storage.replicate",
                lambda p: {
                    "requested": p["copies"],
                    "placed": [
                        {"provider": PROVIDER, "expires_at": 1900000000.0, "owed": 42}
                        for _ in range(self.placed)
                    ],
                    "refused": {"12D3KooWother": "no_storage"},
                    "owed_total": 42 * self.placed,
                },
            ),
        }

    def params(self, method: str) -> dict:
        found = [p for m, p in self.calls if m == method]
        assert found, f"{method} was not called"
        return found[-1]


@pytest.fixture
def fake():
    return FakeStorage()


@pytest.fixture
def daemon(tmp_path, fake):
    server = RpcServer(tmp_path / "maskd.sock", fake.handlers(), version=maskd_version())
    with serve_in_thread(server) as path:
        yield os.fspath(path)


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.delenv("MASK_SOCKET", raising=False)
    monkeypatch.setenv("MASK_DATA_DIR", os.fspath(tmp_path / "no-daemon-here"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return CliRunner()


def invoke(runner, daemon, *args):
    return runner.invoke(main, ["--socket", daemon, *args], catch_exceptions=False)


def assert_error(result, message: str, hint: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {message}", f"hint: {hint}"]
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ put
def test_put_prints_the_cid_and_sends_an_absolute_path(runner, daemon, fake):
    with open("data.bin", "wb") as f:
        f.write(b"x" * 1000)
    result = invoke(runner, daemon, "put", "data.bin")
    assert result.exit_code == 0, result.output
    assert result.stdout == CID + "\n"
    assert result.stderr == ""  # no spinner or sizes off a terminal
    params = fake.params("v1.storage.put")
    assert params == {"path": os.path.abspath("data.bin")}
    assert os.path.isabs(params["path"])


def test_put_json_has_cid_and_size(runner, daemon, fake):
    os.mkdir("tree")
    result = invoke(runner, daemon, "put", "tree", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data == {"cid": CID, "size": 5 << 20, "blocks": 21, "encrypted_to": None}
    assert fake.params("v1.storage.put")["path"] == os.path.abspath("tree")


def test_put_encrypt_to_passes_the_peer(runner, daemon, fake):
    open("secret.txt", "w").close()
    result = invoke(runner, daemon, "put", "secret.txt", "--encrypt-to", PROVIDER, "--json")
    assert result.exit_code == 0
    assert fake.params("v1.storage.put")["encrypt_to"] == PROVIDER
    assert json.loads(result.stdout)["encrypted_to"] == PROVIDER


def test_put_replicate_asks_for_copies_and_reports_placements(runner, daemon, fake):
    open("f", "w").close()
    result = invoke(runner, daemon, "put", "f", "--replicate", "2", "--duration-hours", "1.5")
    assert result.exit_code == 0, result.output
    assert fake.params("v1.storage.replicate") == {"cid": CID, "copies": 2, "duration_s": 5400.0}
    assert result.stdout == CID + "\n"
    err = result.stderr.splitlines()
    assert err.count(f"pinned by {PROVIDER} until 1900000000 (owed 42 base units)") == 2
    assert "refused by 12D3KooWother: no_storage" in err
    assert not any(line.startswith("warning:") for line in err)


def test_put_replicate_json_nests_the_replication_and_warns_on_shortfall(runner, daemon, fake):
    fake.placed = 1
    open("f", "w").close()
    result = invoke(runner, daemon, "put", "f", "--replicate", "3", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["cid"] == CID and data["replication"]["requested"] == 3
    assert len(data["replication"]["placed"]) == 1
    # --json prints the document only; the shortfall is in it, not on stderr
    assert result.stderr == ""
    plain = invoke(runner, daemon, "put", "f", "--replicate", "3")
    assert "warning: 1 of 3 copies placed" in plain.stderr


def test_put_without_replicate_does_not_call_replicate(runner, daemon, fake):
    open("f", "w").close()
    assert invoke(runner, daemon, "put", "f").exit_code == 0
    assert [m for m, _ in fake.calls] == ["v1.storage.put"]


def test_put_of_a_missing_path_is_refused_before_any_call(runner, daemon, fake):
    result = invoke(runner, daemon, "put", "nope.bin")
    assert result.exit_code == 2  # click's usage error
    assert "does not exist" in result.stderr
    assert fake.calls == []


def test_put_store_full_is_error_and_hint(runner, daemon, fake):
    fake.fail["v1.storage.put"] = StorageError(
        "block store full: 10 of 10 bytes quota used",
        code="store_full",
        hint="raise storage.quota_mb in the config, or run `mask blocks gc`",
    )
    open("f", "w").close()
    result = invoke(runner, daemon, "put", "f", "--json")
    assert_error(
        result,
        "block store full: 10 of 10 bytes quota used",
        "raise storage.quota_mb in the config, or run `mask blocks gc`",
    )


# ------------------------------------------------------------------ get
def test_get_prints_the_destination(runner, daemon, fake):
    result = invoke(runner, daemon, "get", CID, "-o", "out.bin")
    assert result.exit_code == 0, result.output
    dest = os.path.abspath("out.bin")
    assert result.stdout == dest + "\n"
    assert result.stderr == ""
    assert fake.params("v1.storage.get") == {"cid": CID, "dest": dest, "pin": False}


def test_get_json_and_pin(runner, daemon, fake):
    result = invoke(runner, daemon, "get", CID, "--output", "sub/out", "--pin", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    keys = "cid dest size fetched_blocks fetched_bytes peers_used peers_dropped fetch_s export_s"
    assert set(keys.split()) <= data.keys()
    assert data["dest"] == os.path.abspath("sub/out")
    assert fake.params("v1.storage.get")["pin"] is True


def test_get_needs_an_output(runner, daemon, fake):
    result = invoke(runner, daemon, "get", CID)
    assert result.exit_code == 2
    assert "-o" in result.stderr
    assert fake.calls == []


def test_get_failure_is_error_and_hint(runner, daemon, fake):
    fake.fail["v1.storage.get"] = StorageError(
        "no peer left to fetch from", code="fetch_failed", hint="check `mask peers`"
    )
    result = invoke(runner, daemon, "get", CID, "-o", "out")
    assert_error(result, "no peer left to fetch from", "check `mask peers`")


# ------------------------------------------------------------------ pin / unpin
def test_pin_and_unpin(runner, daemon, fake):
    result = invoke(runner, daemon, "pin", CID)
    assert result.exit_code == 0
    assert result.stdout == f"pinned {CID}\n"
    assert fake.params("v1.storage.pin") == {"cid": CID}
    result = invoke(runner, daemon, "unpin", CID)
    assert result.exit_code == 0
    assert result.stdout == f"unpinned {CID}\n"
    fake.unpinned = False
    result = invoke(runner, daemon, "unpin", CID)
    assert result.exit_code == 0
    assert result.stdout == f"{CID} was not pinned\n"


def test_pin_of_an_incomplete_dag_is_error_and_hint(runner, daemon, fake):
    fake.fail["v1.storage.pin"] = StorageError(
        f"cannot pin {CID}: 3 block(s) of its DAG are missing",
        code="dag_incomplete",
        hint="fetch the whole DAG before pinning it",
    )
    result = invoke(runner, daemon, "pin", CID)
    assert_error(
        result,
        f"cannot pin {CID}: 3 block(s) of its DAG are missing",
        "fetch the whole DAG before pinning it",
    )


def test_a_bad_cid_is_error_and_hint(runner, daemon, fake):
    fake.fail["v1.storage.unpin"] = StorageError(
        "'zzz' is not a CID", code="cid_invalid", hint="CIDs look like bafy… or Qm…"
    )
    result = invoke(runner, daemon, "unpin", "zzz")
    assert_error(result, "'zzz' is not a CID", "CIDs look like bafy… or Qm…")


# ------------------------------------------------------------------ blocks
def test_blocks_gc_plain_and_json(runner, daemon, fake):
    result = invoke(runner, daemon, "blocks", "gc")
    assert result.exit_code == 0
    assert result.stdout == "removed 3 blocks, 1.0 MiB\n"
    data = json.loads(invoke(runner, daemon, "blocks", "gc", "--json").stdout)
    assert data == {"blocks": 3, "bytes": 1 << 20}


def stat_rows(out: str) -> dict[str, str]:
    rows = [line.split("  ", 1) for line in out.splitlines()]
    return {key.strip(): value.strip() for key, value in rows}


def test_blocks_stat_table(runner, daemon):
    result = invoke(runner, daemon, "blocks", "stat")
    assert result.exit_code == 0
    rows = stat_rows(result.stdout)
    assert rows["backend"] == "local"
    assert rows["blocks"] == "1,234"
    assert rows["used"] == "3.0 MiB of 10.0 GiB"
    assert rows["pinned roots"] == "2"
    assert rows["served"] == "40 blocks, 10.0 MiB"
    assert rows["fetched"] == "7 blocks, 1.0 MiB"
    assert rows["corrupt from peers"] == "1"
    assert rows["replicas hosted"] == "3"


def test_blocks_stat_json_is_the_daemons_document(runner, daemon):
    result = invoke(runner, daemon, "blocks", "stat", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data == STAT
    assert {"blocks", "bytes", "pinned_roots", "quota_bytes", "backend", "exchange"} <= data.keys()


def test_blocks_stat_without_quota_shows_bytes_only(runner, tmp_path):
    async def stat(params):
        return {"blocks": 0, "bytes": 0, "pinned_roots": 0, "quota_bytes": None}

    server = RpcServer(tmp_path / "s.sock", {"v1.storage.stat": stat})
    with serve_in_thread(server) as path:
        result = invoke(runner, os.fspath(path), "blocks", "stat")
    assert result.exit_code == 0
    rows = stat_rows(result.stdout)
    assert rows["used"] == "0 B"  # no "of <quota>"
    assert rows["fetched"] == "0 blocks, 0 B"  # no exchange section: zeros
    assert rows["backend"] == "local"


def test_blocks_gc_failure_is_error_and_hint(runner, daemon, fake):
    fake.fail["v1.storage.gc"] = StorageError(
        "cannot open block store", code="store_unavailable", hint="check the data dir"
    )
    assert_error(
        invoke(runner, daemon, "blocks", "gc", "--json"),
        "cannot open block store",
        "check the data dir",
    )


def test_no_daemon_is_error_and_hint(runner, tmp_path):
    result = runner.invoke(main, ["--socket", os.fspath(tmp_path / "none.sock"), "blocks", "stat"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"error: no maskd daemon at {tmp_path / 'none.sock'}"
    assert result.stderr.splitlines()[1].startswith("hint: ")
