import json
import logging

import pytest

from maskd.daemon import DataDirLock, _overrides, setup_logging
from protocol.errors import MaskError


def test_flags_become_config_overrides():
    o = _overrides(
        "/d", ("/ip4/127.0.0.1/tcp/0",), ("/ip4/1.2.3.4/tcp/1/p2p/x",), "provider", "debug", True
    )
    assert o == {
        "node": {"data_dir": "/d", "role": "provider", "log_level": "debug", "log_json": True},
        "p2p": {"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": ["/ip4/1.2.3.4/tcp/1/p2p/x"]},
    }
    assert _overrides(None, (), (), None, None, False) == {}


def test_log_json_writes_one_object_per_line(capsys):
    setup_logging("info", True)
    logging.getLogger("maskd.test").info("hello %s", "world")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert json.loads(line)["msg"] == "hello world"
    setup_logging("info", False)


def test_data_dir_lock_refuses_a_second_holder(tmp_path):
    first = DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(MaskError) as exc:
        DataDirLock(tmp_path).acquire()
    assert exc.value.code == "daemon_running" and "--data-dir" in exc.value.hint
    first.release()
    DataDirLock(tmp_path).acquire()  # free again
