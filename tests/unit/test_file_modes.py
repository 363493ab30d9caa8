"""Everything a node writes is its owner's only: the data dir, the job store,
what the daemon writes after start, and a devnet's dirs and files."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from maskd.daemon import secure_data_dir
from maskd.devnet import DevNode, write_state
from protocol.errors import MaskError
from scheduler.store import JobStore


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask():
    """The umask a daemon is typically started under; restored afterwards."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_an_existing_0755_data_dir_is_tightened_to_0700_and_logged(tmp_path, loose_umask, caplog):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    with caplog.at_level(logging.INFO, logger="maskd"):
        secure_data_dir(data)
    assert mode(data) == 0o700
    assert any("0755" in r.getMessage() and "0700" in r.getMessage() for r in caplog.records)


def test_a_new_data_dir_and_its_missing_parents_are_0700(tmp_path, loose_umask):
    data = tmp_path / "a" / "b" / "data"
    secure_data_dir(data)
    assert mode(data) == 0o700 and mode(tmp_path / "a") == 0o700


def test_after_start_every_file_and_dir_the_node_makes_is_owner_only(tmp_path, loose_umask):
    data = tmp_path / "data"
    secure_data_dir(data)
    # what the jobs service does with results and bundles: plain open() and mkdir
    (data / "jobs").mkdir()
    with open(data / "jobs" / "result.car", "wb") as f:
        f.write(b"x")
    fd = os.open(data / "jobs" / "exported", os.O_WRONLY | os.O_CREAT, 0o666)
    os.close(fd)
    assert mode(data / "jobs") == 0o700
    assert mode(data / "jobs" / "result.car") == 0o600
    assert mode(data / "jobs" / "exported") == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a dir owned by another user")
def test_a_data_dir_owned_by_another_user_is_refused(tmp_path, loose_umask):
    data = tmp_path / "theirs"
    data.mkdir(mode=0o755)
    os.chown(data, 65534, 65534)
    with pytest.raises(MaskError) as exc:
        secure_data_dir(data)
    assert exc.value.code == "data_dir_not_ours"
    assert "--data-dir" in exc.value.hint
    assert mode(data) == 0o755  # not touched


def test_a_data_dir_that_is_a_file_is_refused(tmp_path, loose_umask):
    data = tmp_path / "file"
    data.write_text("")
    with pytest.raises(MaskError) as exc:
        secure_data_dir(data)
    assert exc.value.hint


def test_the_job_store_and_its_wal_files_are_0600(tmp_path, loose_umask):
    path = tmp_path / "jobs.db"
    with JobStore(path) as store:
        store.create("job-1", role="requester", spec={"name": "x"}, now=1.0)
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(f.exists() for f in files)
        assert [mode(f) for f in files] == [0o600] * 3


def test_an_existing_world_readable_job_store_is_tightened(tmp_path, loose_umask):
    path = tmp_path / "jobs.db"
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").write_bytes(b"")
        os.chmod(f"{path}{suffix}", 0o644)
    JobStore(path).close()
    assert mode(path) == 0o600
    for suffix in ("-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            assert mode(Path(f"{path}{suffix}")) == 0o600


def test_devnet_dirs_and_files_are_owner_only(tmp_path, loose_umask):
    root = tmp_path / "devnet"
    # the wrapper `true` stands in for the daemon: only what start() makes is checked
    node = DevNode(root / "node0", prefix=["true"])
    node.start()
    node.proc.wait(timeout=10)
    assert mode(root) == 0o700 and mode(node.data_dir) == 0o700
    assert mode(node.data_dir / "maskd.out") == 0o600
    assert mode(node.data_dir / "maskd.err") == 0o600
    write_state(root, [node])
    assert mode(root / "devnet.json") == 0o600
