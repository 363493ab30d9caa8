"""maskd/known_peers.py: the restart cache of peers (a cache: never fails a start)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskd import known_peers as kp

A = "12D3KooWEZM2WWHVTRc6XrHYi4g7Z6vs9fnmFPDKvrUsVJmf9tAc"
B = "12D3KooWCmqMMwMrXE89F2nZxQ3JH9XmzYSAYBHokuthtxDjwsJm"
ADDR = "/ip4/127.0.0.1/tcp/4001"


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    entries = kp.merge([], [(A, [ADDR]), (B, [ADDR, "/ip4/10.0.0.2/tcp/4001"])], now=1000.0)
    kp.save(tmp_path / "peers.json", entries)
    assert kp.load(tmp_path / "peers.json", now=1001.0) == entries


@pytest.mark.parametrize(
    "content", ["", "{not json", "[]", '{"peers": 3}', '{"peers": [{"peer_id": 1}]}']
)
def test_a_broken_file_means_no_peers_not_a_failed_start(tmp_path: Path, content: str) -> None:
    (tmp_path / "peers.json").write_text(content)
    assert kp.load(tmp_path / "peers.json", now=0.0) == []
    assert kp.load(tmp_path / "missing.json", now=0.0) == []


def test_old_entries_are_dropped_and_bad_ones_skipped(tmp_path: Path) -> None:
    now = 10 * kp.MAX_AGE_S
    data = {
        "peers": [
            {"peer_id": A, "addrs": [ADDR], "last_seen": now - 60},
            {"peer_id": B, "addrs": [ADDR], "last_seen": now - kp.MAX_AGE_S - 1},
            {"peer_id": "x", "addrs": "not a list", "last_seen": now},
        ]
    }
    (tmp_path / "peers.json").write_text(json.dumps(data))
    assert [e["peer_id"] for e in kp.load(tmp_path / "peers.json", now)] == [A]


def test_merge_refreshes_who_is_connected_and_keeps_the_most_recent() -> None:
    old = [{"peer_id": A, "addrs": ["/ip4/127.0.0.1/tcp/1"], "last_seen": 5.0}]
    merged = kp.merge(old, [(A, [ADDR])], now=9.0)
    assert merged == [{"peer_id": A, "addrs": [ADDR], "last_seen": 9.0}]
    many = [(f"peer{i:04d}", [ADDR]) for i in range(kp.LIMIT + 10)]
    assert len(kp.merge(merged, many, now=10.0)) == kp.LIMIT
    # the newest survive the cap; A (seen at 9.0) is the one dropped first
    assert A not in {e["peer_id"] for e in kp.merge(merged, many, now=10.0)}


def test_the_mesh_takes_valid_entries_only() -> None:
    import os

    from p2p.mesh import Mesh, MeshHandlers
    from p2p.settings import MeshSettings
    from p2p.validation import GossipValidator, ValidationLimits

    mesh = Mesh(
        MeshSettings(listen=("/ip4/127.0.0.1/tcp/0",)),
        os.urandom(32),
        validator=GossipValidator(ValidationLimits()),
        handlers=MeshHandlers(),
        topics={},
    )
    taken = mesh.remember(
        [
            (A, [ADDR]),
            ("not-a-peer-id", [ADDR]),
            (B, ["not a multiaddr"]),
            (B, []),
            (mesh.peer_id.to_base58(), [ADDR]),  # ourselves
        ]
    )
    assert taken == 1


def test_a_save_is_needed_for_a_change_or_a_stale_file_not_every_tick() -> None:
    old = kp.merge([], [(A, [ADDR])], now=100.0)
    same_later = kp.merge(old, [(A, [ADDR])], now=110.0)
    assert not kp.needs_save(old, same_later, saved_at=100.0, now=110.0)
    assert kp.needs_save(old, same_later, saved_at=100.0, now=100.0 + kp.REFRESH_S)
    moved = kp.merge(old, [(A, ["/ip4/127.0.0.1/tcp/5"])], now=110.0)
    assert kp.needs_save(old, moved, saved_at=100.0, now=110.0)
    joined = kp.merge(old, [(B, [ADDR])], now=110.0)
    assert kp.needs_save(old, joined, saved_at=100.0, now=110.0)
