"""``mask get --symlinks``: the opt-in reaches the daemon only when given."""

from __future__ import annotations

import os

from tests.unit.test_cli_storage import CID, daemon, fake, invoke, runner  # noqa: F401


def test_get_sends_symlinks_only_when_asked(runner, daemon, fake):  # noqa: F811
    result = invoke(runner, daemon, "get", CID, "-o", "out", "--symlinks")
    assert result.exit_code == 0, result.output
    assert fake.params("v1.storage.get") == {
        "cid": CID,
        "dest": os.path.abspath("out"),
        "pin": False,
        "symlinks": True,
    }
    invoke(runner, daemon, "get", CID, "-o", "out2")
    assert "symlinks" not in fake.params("v1.storage.get")


def test_get_help_states_the_symlink_policy(runner, daemon):  # noqa: F811
    result = invoke(runner, daemon, "get", "--help")
    assert "--symlinks" in result.stdout
    assert "inside" in result.stdout
