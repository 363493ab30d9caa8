"""Fuzz everything a peer can hand the export path: CAR bytes, dag-pb and UnixFS
blocks, whole hostile trees. Only typed errors may come out; nothing may land
outside the destination; no limit may be exceeded; a failed export leaves
nothing behind. Derandomised, so every run tries the same cases."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import MaskError, StorageError
from storage import car
from storage.carfile import CarFile, export_car, read_file_at, verify_car
from storage.cid import DAG_PB, RAW, cid_bytes_v1, cid_of_bytes, cid_to_bytes, format_cid
from storage.dagpb import PBLink, decode_node
from storage.exporter import ExportLimits, export_to_path, read_file_in_dag
from storage.unixfs import (
    T_FILE,
    T_HAMT_SHARD,
    decode_unixfs,
    encode_unixfs,
    import_path,
)
from tests.dagbuild import Dag

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NAMES = st.one_of(
    st.sampled_from(
        [b"a", b"b", b"stdout.log", b".", b"..", b"", b"a/b", b"x\x00", b"n" * 255, b"n" * 256]
        + [b"\xff\xfe", b"-rf", b"a\nb", b"\x1b[2J"]
    ),
    st.binary(min_size=1, max_size=6),
)
TARGETS = st.one_of(
    st.sampled_from(
        [b"a", b"./a", b"../a", b"..", b"../..", b"/etc/passwd", b"a/../..", b"b/c"]
        + [b"", b"x\x00y", b"../" * 8, b"x" * 5000, b"."]
    ),
    st.binary(max_size=12),
)
ROOMY = ExportLimits(max_bytes=1 << 20, max_entries=2000, max_depth=64, max_blocks=10_000)
LIMITS = st.just(ROOMY) | st.builds(
    ExportLimits,
    max_bytes=st.sampled_from([0, 100, 10_000, 1 << 20]),
    max_entries=st.sampled_from([1, 5, 50, 2000]),
    max_depth=st.sampled_from([0, 1, 3, 64]),
    max_blocks=st.sampled_from([1, 10, 100, 10_000]),
)


# ------------------------------------------------------------------ hostile trees
def draw_file(draw, dag: Dag, depth: int, pool: list[str]) -> tuple[str, int]:
    """A file (raw leaf or File node), its true size; sizes may lie."""
    if depth >= 3 or draw(st.booleans()):
        data = draw(st.binary(max_size=40))
        return dag.raw(data), len(data)
    children = [draw_file(draw, dag, depth + 1, pool) for _ in range(draw(st.integers(0, 4)))]
    sizes = [size for _, size in children]
    if draw(st.integers(0, 4)) == 0:  # a lie about one child's size, or a wrong count
        sizes = draw(st.lists(st.integers(0, 1 << 62), max_size=5))
    filesize = draw(st.one_of(st.none(), st.just(sum(sizes)), st.integers(0, 1 << 62)))
    data = encode_unixfs(T_FILE, filesize=filesize, blocksizes=sizes)
    links = [PBLink(cid_to_bytes(c), b"", s) for c, s in children]
    return dag.node(links, data), sum(s for _, s in children)


def bomb(dag: Dag, levels: int, fanout: int, leaf: bytes) -> str:
    cid, size = dag.raw(leaf), len(leaf)
    for _ in range(levels):
        cid, size = dag.file([cid] * fanout, [size] * fanout), size * fanout
    return cid


def draw_entry(draw, dag: Dag, depth: int, pool: list[str]) -> str:
    kinds = ["file", "symlink", "shared", "garbage", "missing", "bomb"]
    if depth < 4:
        kinds += ["dir", "dir", "hamt", "wide", "bad_hamt"]
    kind = draw(st.sampled_from(kinds))
    if kind == "shared" and pool:
        return draw(st.sampled_from(pool))
    if kind == "file" or kind == "shared":
        cid = draw_file(draw, dag, 0, pool)[0]
    elif kind == "symlink":
        cid = dag.symlink(draw(TARGETS))
    elif kind == "garbage":  # hashes right, parses as whatever it is
        block = draw(st.binary(max_size=60))
        codec = draw(st.sampled_from([DAG_PB, RAW, 0x71]))
        cid = format_cid(cid_bytes_v1(codec, hashlib.sha256(block).digest()))
        dag[cid] = block
    elif kind == "missing":
        cid = cid_of_bytes(draw(st.binary(min_size=1, max_size=8)) + b"not stored")
    elif kind == "bomb":
        levels = draw(st.integers(1, 6))
        cid = bomb(dag, levels, draw(st.sampled_from([2, 174])), draw(st.binary(max_size=100)))
    elif kind in ("dir", "hamt"):
        entries = [
            (draw(NAMES), draw_entry(draw, dag, depth + 1, pool))
            for _ in range(draw(st.integers(0, 4)))
        ]
        if kind == "dir":
            cid = dag.dir(entries)
        else:
            unique = list({name: c for name, c in entries if name}.items())
            cid = dag.hamt(unique)
    elif kind == "wide":  # many names, one shared subtree: an entry bomb
        child = draw_entry(draw, dag, depth + 1, pool)
        cid = dag.dir([(b"e%d" % i, child) for i in range(draw(st.integers(1, 300)))])
    else:  # a HAMT node whose links and fields are drawn
        names = draw(st.lists(st.binary(max_size=4), max_size=4))
        links = [PBLink(cid_to_bytes(draw_entry(draw, dag, 4, pool)), n, 1) for n in names]
        data = encode_unixfs(
            T_HAMT_SHARD,
            data=draw(st.binary(max_size=4)),
            hash_type=draw(st.sampled_from([0x22, 0x23, None])),
            fanout=draw(st.sampled_from([256, 16, None])),
        )
        cid = dag.node(links, data)
    pool.append(cid)
    return cid


@st.composite
def hostile_trees(draw) -> tuple[Dag, str]:
    dag = Dag()
    return dag, draw_entry(draw, dag, 0, [])


class Counting:
    def __init__(self, get) -> None:
        self.get = get
        self.reads = 0

    def __call__(self, cid: str) -> bytes:
        self.reads += 1
        return self.get(cid)


def check_export(tmp: Path, run, limits: ExportLimits, symlinks: bool) -> None:
    """Run one export into a sandbox and check every promise the exporter makes."""
    box, outside = tmp / "box", tmp / "outside"
    box.mkdir()
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    dest = box / "out"
    try:
        run(dest)
    except MaskError:
        assert not os.path.lexists(dest), "a failed export left something behind"
    else:
        check_tree(dest, limits, symlinks)
    assert os.listdir(box) in ([], ["out"])
    assert os.listdir(outside) == ["keep"] and (outside / "keep").read_bytes() == b"keep"


def resolves_inside(link: str, root: str) -> bool:
    """Follow ``link`` as the kernel would; every step must stay inside ``root``
    (a loop is fine: it resolves nowhere)."""
    cur = os.path.dirname(link)
    todo = os.readlink(link).split("/")
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        cur = os.path.dirname(cur) if part == ".." else os.path.join(cur, part)
        if cur != root and not cur.startswith(root + os.sep):
            return False
        if os.path.islink(cur):
            hops += 1
            if hops > 40:
                return True  # ELOOP
            target = os.readlink(cur)
            if target.startswith("/"):
                return False
            cur = os.path.dirname(cur)
            todo = target.split("/") + todo
    return True


def check_tree(dest: Path, limits: ExportLimits, symlinks: bool) -> None:
    real = os.path.realpath(dest)
    entries, nbytes = 1, 0
    if dest.is_file() and not dest.is_symlink():
        nbytes = dest.stat().st_size
    assert not dest.is_symlink()
    for dirpath, dirnames, filenames in os.walk(real):
        depth = len(Path(dirpath).relative_to(real).parts) + 1
        for name in dirnames + filenames:
            entries += 1
            path = os.path.join(dirpath, name)
            assert depth <= limits.max_depth
            if os.path.islink(path):
                assert symlinks, f"a symlink was written: {path}"
                assert resolves_inside(path, real)
            elif os.path.isfile(path):
                nbytes += os.lstat(path).st_size
    assert entries <= limits.max_entries
    assert nbytes <= limits.max_bytes


@settings(FUZZ, max_examples=250)
@given(tree=hostile_trees(), limits=LIMITS, symlinks=st.booleans())
def test_a_hostile_tree_only_fails_typed_and_stays_in_bounds(tree, limits, symlinks) -> None:
    dag, root = tree
    with tempfile.TemporaryDirectory() as tmp:
        carpath = dag.write_car(Path(tmp) / "in.car", root)
        counting: list[Counting] = []

        def run(dest: Path) -> None:
            with CarFile(carpath, max_blocks=limits.max_blocks) as cf:
                counting.append(Counting(cf.get))
                export_to_path(root, counting[0], dest, limits=limits, symlinks=symlinks)

        check_export(Path(tmp), run, limits, symlinks)
        # a checking pass and a writing pass, each within the block budget
        assert not counting or counting[0].reads <= 2 * limits.max_blocks


@settings(FUZZ, max_examples=150)
@given(
    tree=hostile_trees(),
    name=st.sampled_from(["a", "b", "stdout.log", "..", "", "e1"]),
    max_bytes=st.sampled_from([0, 1, 50, 1 << 16]),
    tail=st.booleans(),
)
def test_reading_one_file_of_a_hostile_tree_is_bounded(tree, name, max_bytes, tail) -> None:
    dag, root = tree

    def get(cid: str) -> bytes:
        if cid not in dag:
            raise StorageError(f"block {cid} is not here", code="block_not_found")
        return dag[cid]

    source = Counting(get)
    try:
        data, truncated = read_file_in_dag(root, source, name, max_bytes=max_bytes, tail=tail)
    except MaskError:
        return
    assert len(data) <= max_bytes
    assert isinstance(truncated, bool)
    # one directory path (HAMT: at most 8 shards) plus one path down the file per chunk
    assert source.reads <= 12 + 7 * max(1, max_bytes)


# ------------------------------------------------------------------ symlinks allowed
LINK_TARGETS = st.lists(
    st.sampled_from(["..", ".", "a", "b", "c", ""]), min_size=1, max_size=5
).map(lambda parts: "/".join(parts).encode())


def draw_link_tree(draw, dag: Dag, depth: int) -> str:
    entries = []
    for name in draw(st.lists(st.sampled_from([b"a", b"b", b"c"]), unique=True, max_size=3)):
        kind = draw(
            st.sampled_from(["file", "link", "link", "dir"] if depth < 3 else ["file", "link"])
        )
        if kind == "file":
            entries.append((name, dag.raw(name)))
        elif kind == "link":
            entries.append((name, dag.symlink(draw(LINK_TARGETS))))
        else:
            entries.append((name, draw_link_tree(draw, dag, depth + 1)))
    return dag.dir(entries)


@st.composite
def link_trees(draw) -> tuple[Dag, str]:
    dag = Dag()
    return dag, draw_link_tree(draw, dag, 0)


@settings(FUZZ, max_examples=200)
@given(tree=link_trees())
def test_every_symlink_written_resolves_inside_dest(tree) -> None:
    dag, root = tree
    with tempfile.TemporaryDirectory() as tmp:
        check_export(
            Path(tmp),
            lambda dest: export_to_path(root, dag.__getitem__, dest, symlinks=True),
            ROOMY,
            True,
        )


# ------------------------------------------------------------------ CAR bytes
def base_cars() -> list[tuple[bytes, str]]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t"
        (src / "sub").mkdir(parents=True)
        (src / "stdout.log").write_bytes(b"0123456789" * 7)
        (src / "sub" / "x").write_bytes(b"x")
        os.symlink("../stdout.log", src / "sub" / "l")
        for threshold in (262_144, 1):
            blocks = Dag()
            root = import_path(src, blocks, chunk_size=16, max_links=3, hamt_threshold=threshold)
            buf = io.BytesIO()
            car.write_car([root.cid], blocks.items(), buf)
            out.append((buf.getvalue(), root.cid))
    return out


BASES = base_cars()
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["set", "insert", "delete", "truncate"]), st.integers(0, 1 << 16)
    ).flatmap(lambda t: st.tuples(st.just(t[0]), st.just(t[1]), st.integers(0, 255))),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for op, pos, byte in mutations:
        pos %= max(1, len(buf))
        if op == "set" and buf:
            buf[pos] = byte
        elif op == "insert":
            buf.insert(pos, byte)
        elif op == "delete" and buf:
            del buf[pos]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


@settings(FUZZ, max_examples=250)
@given(
    base=st.sampled_from(range(len(BASES))),
    mutations=MUTATIONS,
    limits=LIMITS,
    symlinks=st.booleans(),
)
def test_a_mutated_car_only_fails_typed(base, mutations, limits, symlinks) -> None:
    data, root = BASES[base]
    with tempfile.TemporaryDirectory() as tmp:
        carpath = Path(tmp) / "in.car"
        carpath.write_bytes(mutate(data, mutations))
        for call in (
            lambda: verify_car(carpath, root),
            lambda: read_file_at(carpath, root, "stdout.log", max_bytes=20, tail=True),
        ):
            try:
                call()
            except MaskError:
                pass
        check_export(
            Path(tmp),
            lambda dest: export_car(carpath, root, dest, limits=limits, symlinks=symlinks),
            limits,
            symlinks,
        )


# ------------------------------------------------------------------ single blocks
@settings(FUZZ, max_examples=400)
@given(block=st.binary(max_size=80))
def test_random_bytes_decode_only_to_typed_errors(block: bytes) -> None:
    for parse in (decode_node, decode_unixfs):
        try:
            parse(block)
        except MaskError:
            pass
    try:
        roots, sections = car.read_car(io.BytesIO(block))
        list(sections)
    except MaskError:
        pass


@settings(FUZZ, max_examples=200)
@given(block=st.binary(max_size=80), name=NAMES, limits=LIMITS)
def test_a_random_block_in_a_directory_only_fails_typed(block, name, limits) -> None:
    dag = Dag()
    child = format_cid(cid_bytes_v1(DAG_PB, hashlib.sha256(block).digest()))
    dag[child] = block
    root = dag.dir([(name, child)])
    with tempfile.TemporaryDirectory() as tmp:
        check_export(
            Path(tmp),
            lambda dest: export_to_path(root, dag.__getitem__, dest, limits=limits),
            limits,
            False,
        )
