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
