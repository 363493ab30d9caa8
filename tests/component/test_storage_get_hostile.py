"""``v1.storage.get`` of a DAG holding a symlink: refused unless asked, then kept inside."""

from __future__ import annotations

import os

import pytest
import trio

from maskd.config import StorageConfig
from protocol.errors import StorageError
from storage.service import StorageService
from storage.testing import FakeNetwork
from tests.dagbuild import Dag


def service(tmp_path, net: FakeNetwork) -> StorageService:
    opener = net.open_stream_from("me")
    return StorageService(
        StorageConfig(),
        tmp_path / "me",
        peer_id="me",
        open_stream=lambda peer, protocol: opener(peer),
        connected_peers=lambda: [],
        penalise=lambda peer, reason: None,
        publish=lambda event: None,
        lookup_offer=lambda peer: None,
        list_offers=list,
        storage_mb=64,
        fsync=False,
    )


async def get_with_symlink(tmp_path, target: bytes, **params) -> tuple[dict, str]:
    dag = Dag()
    root = dag.dir([(b"a.txt", dag.raw(b"a")), (b"l", dag.symlink(target))])
    dest = str(tmp_path / "out")
    outcome: list = []
    async with trio.open_nursery() as nursery:
        svc = service(tmp_path, FakeNetwork(nursery))
        for cid, data in dag.items():
            svc.store.put(cid, data)
        try:
            outcome.append(await svc.get({"cid": root, "dest": dest, **params}))
        except StorageError as e:
            outcome.append(e)
        nursery.cancel_scope.cancel()
    if isinstance(outcome[0], StorageError):
        raise outcome[0]
    return outcome[0], dest


async def test_get_refuses_a_symlink_by_default(tmp_path) -> None:
    with pytest.raises(StorageError) as info:
        await get_with_symlink(tmp_path, b"a.txt")
    assert info.value.code == "unsafe_entry"
    assert "--symlinks" in info.value.hint
    assert not os.path.lexists(tmp_path / "out")


async def test_get_with_symlinks_writes_one_that_stays_inside(tmp_path) -> None:
    _, dest = await get_with_symlink(tmp_path, b"a.txt", symlinks=True)
    assert os.readlink(os.path.join(dest, "l")) == "a.txt"


async def test_get_with_symlinks_still_refuses_one_that_leaves(tmp_path) -> None:
    with pytest.raises(StorageError) as info:
        await get_with_symlink(tmp_path, b"../../etc", symlinks=True)
    assert info.value.code == "unsafe_entry"


async def test_get_symlinks_must_be_a_bool(tmp_path) -> None:
    with pytest.raises(StorageError) as info:
        await get_with_symlink(tmp_path, b"a.txt", symlinks="yes")
    assert info.value.code == "invalid_params"


async def test_get_of_a_dag_declaring_more_than_the_disk_holds_is_refused_first(
    tmp_path, monkeypatch
) -> None:
    """``mask get`` of a bomb: a small DAG declaring 2 GB is refused before a byte is
    written, because the disk (as statvfs says) has only 1 GiB free, whatever the
    1 TiB default. (Kept small: a regression writes at most 2 GB.)"""
    dag = Dag()
    leaf = dag.raw(b"\0" * 262144)
    mid = dag.file([leaf] * 1000, [262144] * 1000)
    big = dag.file([mid] * 8, [262144 * 1000] * 8)
    root = dag.dir([(b"big", big)])
    real = os.statvfs

    class Small:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = 4096, (1 << 30) // 4096  # 1 GiB free
            self.f_files, self.f_favail = st.f_files, st.f_favail

    monkeypatch.setattr(os, "statvfs", lambda p: Small(real(p)))
    dest = tmp_path / "out"
    async with trio.open_nursery() as nursery:
        svc = service(tmp_path, FakeNetwork(nursery))
        for cid, data in dag.items():
            svc.store.put(cid, data)
        with pytest.raises(StorageError) as info:
            await svc.get({"cid": root, "dest": str(dest)})
        nursery.cancel_scope.cancel()
    assert "bytes" in info.value.message and "free" in (info.value.hint or "")
    assert not os.path.lexists(dest)
