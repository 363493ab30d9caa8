"""Socket discovery order: --socket, $MASK_SOCKET, $MASK_DATA_DIR, default."""

from pathlib import Path

import platformdirs

from maskd.paths import SOCKET_NAME, default_data_dir, find_socket


def test_explicit_wins_over_environment():
    env = {"MASK_SOCKET": "/env/s.sock", "MASK_DATA_DIR": "/data"}
    assert find_socket("/flag/s.sock", env=env) == Path("/flag/s.sock")


def test_mask_socket_wins_over_data_dir():
    env = {"MASK_SOCKET": "/env/s.sock", "MASK_DATA_DIR": "/data"}
    assert find_socket(None, env=env) == Path("/env/s.sock")


def test_data_dir_gives_its_socket():
    assert find_socket(None, env={"MASK_DATA_DIR": "/data"}) == Path("/data") / SOCKET_NAME


def test_default_data_dir_when_nothing_is_set():
    assert find_socket(None, env={}) == default_data_dir() / "maskd.sock"
    assert default_data_dir() == platformdirs.user_data_path("maskd")


def test_empty_values_count_as_unset():
    env = {"MASK_SOCKET": "", "MASK_DATA_DIR": "/data"}
    assert find_socket("", env=env) == Path("/data/maskd.sock")


def test_tilde_is_expanded():
    assert find_socket("~/x.sock", env={}) == Path.home() / "x.sock"


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("MASK_SOCKET", "/from/environ.sock")
    assert find_socket() == Path("/from/environ.sock")


def test_empty_data_dir_falls_back_to_the_default():
    assert find_socket(None, env={"MASK_DATA_DIR": ""}) == default_data_dir() / SOCKET_NAME
