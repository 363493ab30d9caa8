"""The external IPFS backend against a real IPFS daemon: js-ipfs 0.66.1.

``make test`` installs it (``make jsipfs``: npm ci into .jsipfs/), so a daemon
that cannot start is a failure, not a skip; ``MASK_SKIP_JSIPFS=1`` skips this
file where Node.js is not available. It is js-ipfs and not Kubo because no
Kubo binary installs without internet (docs/storage.md).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from maskd.devnet import DevNode, devnet_config_path
from protocol.errors import StorageError
from storage.cid import parse_cid
from storage.exporter import export
from storage.ipfs import KuboClient, probe_blob
from storage.unixfs import import_file, import_path
from tests.integration.jsipfs import JsIpfs, JsIpfsError, installed_version

pytestmark = pytest.mark.integration

CHUNK = 262_144
MiB = 1 << 20
MISSING = "bafkreifu2elh7weezr54lf6vrtc4yhbv4mycrfeivk5hrrmhspuvib7nfe"  # no one has it


@pytest.fixture(scope="module")
def jsipfs():
    if os.environ.get("MASK_SKIP_JSIPFS") == "1":
        pytest.skip("MASK_SKIP_JSIPFS=1: no js-ipfs daemon")
    root = Path(tempfile.mkdtemp(prefix="mkipfs", dir="/tmp"))
    daemon = JsIpfs(root)
    try:
        error = None
        try:
            daemon.start()
        except JsIpfsError as exc:
            error = str(exc)
        if error is not None:  # make test installs js-ipfs: not starting is a failure
            pytest.fail(f"{error}\n(MASK_SKIP_JSIPFS=1 skips these tests)", pytrace=False)
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kubo(jsipfs):
    client = KuboClient(jsipfs.api, timeout=30)
    yield client
    client.close()


def ours(data: bytes) -> str:
    return import_file(io.BytesIO(data), lambda cid, block: None).cid


def test_the_probe_passes_against_js_ipfs(kubo):
    assert installed_version() == "0.66.1"
    assert kubo.version()  # js-ipfs reports its core's version (0.18.1), not the npm one
    assert kubo.probe() == ours(probe_blob())


SIZES = {
    "empty": 0,
    "one byte": 1,
    "one full chunk": CHUNK,
    "one chunk and a byte": CHUNK + 1,
    "probe size": 600_000,
    "3 MB": 3_000_017,
    "175 chunks: a two-level DAG": 174 * CHUNK + 1,
}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_add_gives_our_importers_cid_and_the_bytes_come_back(kubo, tmp_path, size):
    data = random.Random(size).randbytes(size)
    cid = kubo.add_bytes(data, "blob")
    assert cid == ours(data)
    assert kubo.cat_to(cid, tmp_path / "cat.bin") == size
    assert (tmp_path / "cat.bin").read_bytes() == data
    assert b"".join(export(cid, kubo.block_get)) == data  # the backend's get path


def test_a_directory_gets_our_importers_cid(kubo, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "sub" / "x.bin").write_bytes(random.Random(2).randbytes(300_000))
    (tree / "y.txt").write_text("hello\n")
    (tree / ".hidden").write_text("skipped, as by ipfs add -r\n")
    assert kubo.add_path(tree) == import_path(tree, lambda cid, block: None).cid


def test_a_missing_cid_is_a_clear_error_within_the_timeout(jsipfs, tmp_path):
    kubo = KuboClient(jsipfs.api, timeout=1.0)
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        kubo.block_get(MISSING)
    elapsed = time.monotonic() - start
    assert elapsed < 4, f"{elapsed:.1f} s: not the daemon's answer (our read timeout is 6 s)"
    assert err.value.code == "block_not_found", err.value
    assert "timed out" in str(err.value) and "within 1 s" in err.value.hint
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        kubo.cat_to(MISSING, tmp_path / "out.bin")  # no daemon deadline: our read timeout
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"{elapsed:.1f} s"
    assert err.value.code == "ipfs_timeout", err.value
    kubo.close()


def mask(node: DevNode, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from maskd.cli import main; main()", "--socket", str(node.socket)]
        + list(args),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_maskd_puts_and_gets_through_the_js_ipfs_daemon(cluster, jsipfs, kubo, tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(
        devnet_config_path().read_text()
        + f'\n[storage]\nbackend = "ipfs"\nipfs_api = "{jsipfs.api}"\nipfs_timeout_s = 2.0\n'
    )
    node = DevNode(cluster.root / "ipfs-node", config=config)
    cluster.nodes.append(node)  # stopped by the fixture
    node.start().wait_ready(60)  # ready only after the start-up probe passed
    assert node.call("v1.storage.stat")["ipfs_api"] == jsipfs.api

    src = tmp_path / "in.bin"
    src.write_bytes(random.Random(7).randbytes(3 * MiB + 12345))
    put = mask(node, "put", str(src), "--json")
    assert put.returncode == 0, put.stderr
    cid = json.loads(put.stdout)["cid"]
    blocks: list[str] = []
    assert cid == import_file(open(src, "rb"), lambda c, b: blocks.append(c)).cid
    assert len(blocks) == 14  # 13 raw leaves and their dag-pb root

    got = mask(node, "get", cid, "-o", str(tmp_path / "out.bin"), "--json")
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()

    # the data lives in the IPFS daemon, pinned, and not in maskd's own store
    pins = httpx.post(
        jsipfs.api + "/api/v0/pin/ls", params={"arg": cid, "cid-base": "base32"}, timeout=10
    )
    assert pins.status_code == 200 and pins.json()["Keys"][cid]["Type"] == "recursive"
    # js-ipfs keys its blockstore by multihash: refs/local names every block as raw
    local = httpx.post(jsipfs.api + "/api/v0/refs/local", timeout=10).text.splitlines()
    held = {parse_cid(json.loads(line)["Ref"]).digest for line in local if line.strip()}
    assert {parse_cid(c).digest for c in blocks} <= held
    assert node.call("v1.storage.stat")["blocks"] == 0

    # a CID nobody has: a clear error after storage.ipfs_timeout_s, not a hang
    start = time.monotonic()
    missing = mask(node, "get", MISSING, "-o", str(tmp_path / "missing.bin"))
    elapsed = time.monotonic() - start
    assert missing.returncode != 0
    assert elapsed < 6, f"{elapsed:.1f} s"
    assert "timed out" in missing.stderr, missing.stderr
