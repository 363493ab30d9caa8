"""Where a client finds the daemon's socket (DESIGN §1).

The order is fixed so that every client (CLI, TUI, SDK) agrees: ``--socket``,
else ``$MASK_SOCKET``, else ``$MASK_DATA_DIR/maskd.sock``, else the default
data dir's ``maskd.sock``. Pure apart from reading the environment, which can
be passed in so tests do not touch ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs

__all__ = ["SOCKET_NAME", "default_data_dir", "find_socket"]

SOCKET_NAME = "maskd.sock"


def default_data_dir() -> Path:
    """The per-user data dir (``~/.local/share/maskd`` on Linux)."""
    return platformdirs.user_data_path("maskd")


def find_socket(
    explicit: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Path:
    """The socket path a client should connect to. Empty values count as unset."""
    environ = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if environ.get("MASK_SOCKET"):
        return Path(environ["MASK_SOCKET"]).expanduser()
    if environ.get("MASK_DATA_DIR"):
        return Path(environ["MASK_DATA_DIR"]).expanduser() / SOCKET_NAME
    return default_data_dir() / SOCKET_NAME
