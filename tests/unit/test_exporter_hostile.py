"""A peer's DAG or CAR can fail an export but never escape, link, bomb or fill the disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protocol.errors import StorageError
from storage.carfile import export_car, read_file_at
from storage.exporter import DEFAULT_LIMITS, ExportLimits, export_to_path, read_file_in_dag
from tests.dagbuild import Dag

KIB = 1024
CHUNK = 256 * KIB


class Watchdog:
    """A block source that gives up after ``most`` reads: turns a hang into a failure."""

    def __init__(self, dag: Dag, most: int = 100_000) -> None:
        self.dag = dag
        self.most = most
        self.reads = 0

    def __call__(self, cid: str) -> bytes:
        self.reads += 1
        if self.reads > self.most:
            raise RuntimeError(f"the exporter read more than {self.most} blocks")
        return self.dag[cid]


def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """``(out, outside)``: the export goes to ``out``; ``outside`` must stay empty."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "box").mkdir()
    return tmp_path / "box" / "out", tmp_path / "outside"


def assert_nothing_written(out: Path, outside: Path) -> None:
    assert not os.path.lexists(out)
    assert list(outside.iterdir()) == []
    assert list(out.parent.iterdir()) == []


def bomb_file(dag: Dag, *, depth: int, leaf: bytes) -> str:
    """A file of ``174**depth`` copies of ``leaf`` in a few blocks (sizes consistent)."""
    cid, size = dag.raw(leaf), len(leaf)
    for _ in range(depth):
        cid, size = dag.file([cid] * 174, [size] * 174), size * 174
    return cid


# ------------------------------------------------------------------ symlinks
def test_a_symlink_entry_is_refused_by_default(tmp_path: Path) -> None:
    dag = Dag()
    root = dag.dir([(b"a.txt", dag.raw(b"hi")), (b"in", dag.symlink(b"../../../.."))])
    out, outside = sandbox(tmp_path)
    with pytest.raises(StorageError) as info:
        export_to_path(root, dag.__getitem__, out)
    assert info.value.code == "unsafe_entry"
    assert "'in'" in info.value.message and info.value.hint
    assert_nothing_written(out, outside)


def test_a_symlink_root_is_refused_even_when_symlinks_are_allowed(tmp_path: Path) -> None:
    dag = Dag()
    root = dag.symlink(b"a")
    out, outside = sandbox(tmp_path)
    for allow in (False, True):
        with pytest.raises(StorageError) as info:
            export_to_path(root, dag.__getitem__, out, symlinks=allow)
        assert info.value.code == "unsafe_entry"
    assert_nothing_written(out, outside)


@pytest.mark.parametrize("allow", [False, True])
def test_a_nul_in_a_symlink_target_is_a_typed_error(tmp_path: Path, allow: bool) -> None:
    dag = Dag()
    root = dag.dir([(b"l", dag.symlink(b"a\x00b"))])
    out, outside = sandbox(tmp_path)
    with pytest.raises(StorageError) as info:
        export_to_path(root, dag.__getitem__, out, symlinks=allow)
    assert info.value.code == "unsafe_entry"
    assert_nothing_written(out, outside)


@pytest.mark.parametrize(
    ("where", "target", "ok"),
    [
        ((), b"a.txt", True),
        ((), b"./sub/f", True),
        ((b"sub",), b"../a.txt", True),
        ((b"sub",), b"..", True),
        ((), b"/etc/passwd", False),
        ((), b"..", False),
        ((), b"../out/a.txt", False),
        ((b"sub",), b"../../x", False),
        ((), b"sub/../a.txt", False),  # '..' after a name: it may climb out of a symlink
        ((), b"", False),
        ((), b"x" * 5000, False),
    ],
)
def test_allowed_symlinks_are_relative_and_stay_inside_dest(
    tmp_path: Path, where: tuple[bytes, ...], target: bytes, ok: bool
) -> None:
    dag = Dag()
    link = dag.symlink(target)
    sub = [(b"f", dag.raw(b"f"))] + ([(b"l", link)] if where else [])
    top = [(b"a.txt", dag.raw(b"a")), (b"sub", dag.dir(sub))] + ([] if where else [(b"l", link)])
    root = dag.dir(top)
    out, outside = sandbox(tmp_path)
    if ok:
        export_to_path(root, dag.__getitem__, out, symlinks=True)
        link_path = out.joinpath(*(os.fsdecode(w) for w in where), "l")
        assert os.readlink(link_path) == os.fsdecode(target)
        assert Path(os.path.realpath(link_path)).is_relative_to(os.path.realpath(out))
    else:
        with pytest.raises(StorageError) as info:
            export_to_path(root, dag.__getitem__, out, symlinks=True)
        assert info.value.code == "unsafe_entry"
        assert_nothing_written(out, outside)


def test_a_symlink_that_is_inside_only_lexically_is_refused(tmp_path: Path) -> None:
    # sub/l1 -> ".." is dest itself; sub/l2 -> "l1/../.." reads as dest too, but the
    # kernel takes ".." from l1's target: dest/.. and out of the sandbox
    dag = Dag()
    sub = dag.dir([(b"l1", dag.symlink(b"..")), (b"l2", dag.symlink(b"l1/../.."))])
    root = dag.dir([(b"sub", sub)])
    out, outside = sandbox(tmp_path)
    with pytest.raises(StorageError) as info:
        export_to_path(root, dag.__getitem__, out, symlinks=True)
    assert info.value.code == "unsafe_entry"
    assert "'sub/l2'" in info.value.message
    assert_nothing_written(out, outside)


def test_export_car_refuses_a_symlink_in_a_bundle(tmp_path: Path) -> None:
    dag = Dag()
    root = dag.dir([(b"in", dag.symlink(b"/"))])
    car = dag.write_car(tmp_path / "b.car", root)
    out, outside = sandbox(tmp_path)
    with pytest.raises(StorageError) as info:
        export_car(car, root, out)
    assert info.value.code == "unsafe_entry"
    assert_nothing_written(out, outside)


# ------------------------------------------------------------------ names
@pytest.mark.parametrize("name", [b"x" * 256, b"a\x00b", b"a/b", b"..", b"."])
def test_names_the_filesystem_cannot_hold_are_refused_before_anything_is_written(
    tmp_path: Path, name: bytes
) -> None:
    dag = Dag()
    root = dag.dir([(b"a", dag.raw(b"a")), (name, dag.raw(b"b"))])
    out, outside = sandbox(tmp_path)
    with pytest.raises(StorageError) as info:
        export_to_path(root, dag.__getitem__, out)
    assert info.value.code == "dag_invalid"
    assert_nothing_written(out, outside)


def test_a_name_of_255_bytes_is_fine(tmp_path: Path) -> None:
    dag = Dag()
    root = dag.dir([(b"y" * 255, dag.raw(b"b"))])
    out, _ = sandbox(tmp_path)
    export_to_path(root, dag.__getitem__, out)
    assert (out / ("y" * 255)).read_bytes() == b"b"


# ------------------------------------------------------------------ never follow a link
def test_a_directory_swapped_for_a_symlink_mid_export_is_not_followed(tmp_path: Path) -> None:
    dag = Dag()
    leaf = dag.raw(b"payload written late")
    root = dag.dir([(b"a", dag.dir([(b"f", leaf)]))])
    out, outside = sandbox(tmp_path)

    def get_block(cid: str) -> bytes:
        if cid == leaf and not (out / "moved").exists() and (out / "a").exists():
            os.rename(out / "a", out / "moved")  # a racing process swaps the directory…
            os.symlink(outside, out / "a")  # …for a link out of the sandbox
        return dag[cid]

    try:
        export_to_path(root, get_block, out)
    except StorageError:
        pass
    assert list(outside.iterdir()) == []


def test_an_entry_that_appears_under_the_exporter_is_not_written_through(tmp_path: Path) -> None:
    dag = Dag()
    leaf = dag.raw(b"evil")
    root = dag.dir([(b"b", leaf)])
    out, outside = sandbox(tmp_path)
    victim = outside / "victim"
    victim.write_bytes(b"untouched")

    def get_block(cid: str) -> bytes:
        if cid == leaf and (out).exists() and not os.path.lexists(out / "b"):
            os.symlink(victim, out / "b")
        return dag[cid]

    with pytest.raises(StorageError) as info:
        export_to_path(root, get_block, out)
    assert info.value.code == "path_exists"
    assert victim.read_bytes() == b"untouched"


# ------------------------------------------------------------------ byte bombs
def test_a_file_declaring_234_tib_is_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    dag = Dag()
    root = dag.dir([(b"big", bomb_file(dag, depth=4, leaf=bytes(CHUNK)))])
    out, outside = sandbox(tmp_path)
    source = Watchdog(dag, most=1000)
    with pytest.raises(StorageError) as info:
        export_to_path(root, source, out)  # the default limits (1 TiB)
    assert info.value.code == "export_limit"
    assert "bytes" in info.value.message
    assert source.reads < 10
    assert_nothing_written(out, outside)


def test_the_byte_budget_counts_every_file(tmp_path: Path) -> None:
    dag = Dag()
    kib = dag.raw(bytes(KIB))
    root = dag.dir([(b"f%03d" % i, kib) for i in range(100)])
    out, outside = sandbox(tmp_path)
    with pytest.raises(StorageError) as info:
        export_to_path(root, dag.__getitem__, out, limits=ExportLimits(max_bytes=10 * KIB))
    assert info.value.code == "export_limit"
    assert_nothing_written(out, outside)
    export_to_path(root, dag.__getitem__, out, limits=ExportLimits(max_bytes=100 * KIB))
    assert len(list(out.iterdir())) == 100


def test_a_file_that_holds_more_than_it_declares_stops_at_the_declared_size(
    tmp_path: Path,
) -> None:
    dag = Dag()
    big = dag.raw(bytes(4 * KIB))
    root = dag.dir([(b"f", dag.file([big, big], [1, 1]))])  # declares 2 bytes, holds 8 KiB
    out, outside = sandbox(tmp_path)
    with pytest.raises(StorageError) as info:
        export_to_path(root, dag.__getitem__, out, limits=ExportLimits(max_bytes=2))
    assert info.value.code == "dag_invalid"
    assert_nothing_written(out, outside)


def test_empty_chunks_shared_a_trillion_times_cost_nothing(tmp_path: Path) -> None:
    dag = Dag()
    cid = dag.raw(b"")
    for _ in range(10):  # 174**10 references to the empty block, all declaring 0 bytes
        cid = dag.file([cid] * 174, [0] * 174)
    out, _ = sandbox(tmp_path)
    source = Watchdog(dag, most=1000)
    export_to_path(cid, source, out)
    assert out.read_bytes() == b""


def test_the_block_budget_bounds_the_work_of_one_export(tmp_path: Path) -> None:
    dag = Dag()
    root = bomb_file(dag, depth=3, leaf=b"x")  # 5.3 MB of one-byte blocks
    out, outside = sandbox(tmp_path)
    source = Watchdog(dag, most=10_000)
    with pytest.raises(StorageError) as info:
        export_to_path(root, source, out, limits=ExportLimits(max_blocks=1000))
    assert info.value.code == "export_limit"
    assert "blocks" in info.value.message
    assert_nothing_written(out, outside)


# ------------------------------------------------------------------ entry bombs
def test_a_million_entries_from_two_blocks_are_refused_before_any_is_created(
    tmp_path: Path,
) -> None:
    dag = Dag()
    leaf = dag.raw(b"")
    inner = dag.dir([(b"f%04d" % i, leaf) for i in range(1001)])
    root = dag.dir([(b"d%04d" % i, inner) for i in range(1000)])
    out, outside = sandbox(tmp_path)
    source = Watchdog(dag, most=5000)
    with pytest.raises(StorageError) as info:
        export_to_path(root, source, out)  # the default limits (1,000,000 entries)
    assert info.value.code == "export_limit"
    assert "entries" in info.value.message
    assert_nothing_written(out, outside)


def test_a_hamt_directory_is_counted_before_its_entries_are_created(tmp_path: Path) -> None:
    dag = Dag()
    leaf = dag.raw(b"")
    root = dag.hamt([(b"n%d" % i, leaf) for i in range(300)])
    out, outside = sandbox(tmp_path)
    with pytest.raises(StorageError) as info:
        export_to_path(root, dag.__getitem__, out, limits=ExportLimits(max_entries=200))
    assert info.value.code == "export_limit"
    assert_nothing_written(out, outside)
    export_to_path(root, dag.__getitem__, out, limits=ExportLimits(max_entries=301))
    assert len(list(out.iterdir())) == 300


def test_nesting_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    dag = Dag()
    cid = dag.raw(b"bottom")
    for i in range(10):
        cid = dag.dir([(b"d%d" % i, cid)])
    out, outside = sandbox(tmp_path)
    with pytest.raises(StorageError) as info:
        export_to_path(cid, dag.__getitem__, out, limits=ExportLimits(max_depth=5))
    assert info.value.code == "export_limit"
    assert_nothing_written(out, outside)
    export_to_path(cid, dag.__getitem__, out, limits=ExportLimits(max_depth=10))


def test_export_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        ExportLimits(max_bytes=-1)
    with pytest.raises(ValueError):
        ExportLimits(max_entries=0)
    with pytest.raises(ValueError):
        ExportLimits(max_depth=100_000)  # the walk recurses once per level
    with pytest.raises(ValueError):
        ExportLimits(max_blocks=True)
    assert DEFAULT_LIMITS.max_bytes == 1 << 40 and DEFAULT_LIMITS.max_entries == 1_000_000


def test_export_car_takes_limits(tmp_path: Path) -> None:
    dag = Dag()
    root = dag.dir([(b"big", bomb_file(dag, depth=2, leaf=bytes(KIB)))])  # 30 MiB declared
    car = dag.write_car(tmp_path / "r.car", root)
    out, outside = sandbox(tmp_path)
    with pytest.raises(StorageError) as info:
        export_car(car, root, out, limits=ExportLimits(max_bytes=1 << 20))
    assert info.value.code == "export_limit"
    assert_nothing_written(out, outside)


# ------------------------------------------------------------------ one file out of a result
def result_dag(dag: Dag) -> str:
    stdout = dag.file([dag.raw(b"line 1\n"), dag.raw(b"line 2\n"), dag.raw(b"oops\n")], [7, 7, 5])
    return dag.dir(
        [
            (b"link", dag.symlink(b"stdout.log")),
            (b"out", dag.dir([(b"x", dag.raw(b"x"))])),
            (b"stderr.log", dag.raw(b"boom\n")),
            (b"stdout.log", stdout),
        ]
    )


def test_read_file_at_reads_one_file_out_of_a_car(tmp_path: Path) -> None:
    dag = Dag()
    root = result_dag(dag)
    car = dag.write_car(tmp_path / "r.car", root)
    assert read_file_at(car, root, "stdout.log", max_bytes=100) == (
        b"line 1\nline 2\noops\n",
        False,
    )
    assert read_file_at(car, root, "stderr.log", max_bytes=5) == (b"boom\n", False)
    assert read_file_at(car, root, "stdout.log", max_bytes=10) == (b"line 1\nlin", True)
    assert read_file_at(car, root, "stdout.log", max_bytes=10, tail=True) == (b"ne 2\noops\n", True)
    assert read_file_at(car, root, "stdout.log", max_bytes=0) == (b"", True)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("missing.log", "entry_not_found"),
        ("out", "not_a_file"),
        ("link", "not_a_file"),
        ("../stdout.log", "invalid_name"),
        ("", "invalid_name"),
    ],
)
def test_read_file_at_refuses_what_is_not_a_file(tmp_path: Path, name: str, code: str) -> None:
    dag = Dag()
    root = result_dag(dag)
    car = dag.write_car(tmp_path / "r.car", root)
    with pytest.raises(StorageError) as info:
        read_file_at(car, root, name, max_bytes=100)
    assert info.value.code == code


def test_read_file_at_of_a_bomb_reads_only_what_it_returns(tmp_path: Path) -> None:
    dag = Dag()
    root = dag.dir([(b"stdout.log", bomb_file(dag, depth=4, leaf=b"A" * CHUNK))])
    for tail in (False, True):
        source = Watchdog(dag, most=100)
        data, truncated = read_file_in_dag(root, source, "stdout.log", max_bytes=1000, tail=tail)
        assert (data, truncated) == (b"A" * 1000, True)
        assert source.reads <= 7


def test_read_file_at_finds_a_name_in_a_hamt(tmp_path: Path) -> None:
    dag = Dag()
    entries = [(b"n%d" % i, dag.raw(b"%d" % i)) for i in range(500)]
    root = dag.hamt(entries + [(b"stderr.log", dag.raw(b"in a shard"))])
    assert read_file_in_dag(root, dag.__getitem__, "stderr.log", max_bytes=100) == (
        b"in a shard",
        False,
    )
    with pytest.raises(StorageError) as info:
        read_file_in_dag(root, dag.__getitem__, "stdout.log", max_bytes=100)
    assert info.value.code == "entry_not_found"


def test_read_file_at_of_a_file_root_is_not_a_directory(tmp_path: Path) -> None:
    dag = Dag()
    root = dag.raw(b"just a file")
    with pytest.raises(StorageError) as info:
        read_file_in_dag(root, dag.__getitem__, "stdout.log", max_bytes=100)
    assert info.value.code == "not_a_directory"
