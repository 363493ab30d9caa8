"""The mesh's settings, which are also the ``[p2p]`` section of the node's config.

Defined once, here, so the mesh does not depend on the daemon's config module:
``maskd.config`` uses this type as its ``p2p`` section, and tests build one
directly. Every key is documented in configs/default.toml; ``maskd.config``
checks the ranges.
"""

from __future__ import annotations

import msgspec


class MeshSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    mdns: bool = False
    dht: bool = True
    max_peers: int = 64
    redial_interval_s: float = 5.0
    discovery_interval_s: float = 30.0
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 5.0
    ping_failures: int = 3
    heartbeat_interval_s: float = 1.0
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    max_message_bytes: int = 65536
    publish_rate_per_s: float = 20.0
    outbound_queue: int = 1024
    ban_threshold: float = 100.0
    ban_duration_s: float = 600.0
    score_half_life_s: float = 300.0
