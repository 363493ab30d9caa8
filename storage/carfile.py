"""A DAG kept as one CAR file outside the block store (private job payloads).

``write_path_car`` imports a file or directory with the UnixFS importer (the
same CID ``BlockStore.add_path`` gives) straight into a CAR; ``CarFile`` indexes
a CAR on disk and serves its blocks by CID, so the exporter can read from it;
``verify_car`` checks that a CAR names exactly one root and holds that root's
whole DAG, every block re-hashed against its CID.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from protocol.errors import StorageError
from storage import car
from storage.cid import canonical, cid_to_bytes, encode_varint, verify_block
from storage.exporter import (
    DEFAULT_LIMITS,
    ExportLimits,
    export_to_path,
    iter_links,
    read_file_in_dag,
)
from storage.fsutil import fsync_dir
from storage.unixfs import ImportResult, import_path


def write_path_car(src: str | os.PathLike, dest: str | os.PathLike) -> ImportResult:
    """Import ``src`` into a new CAR at ``dest`` (atomically); return the import result.

    The importer's sink writes sections to a temporary body (each CID once);
    the header needs the root, known only at the end, so it is written first
    into the final file and the body copied after it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    with tempfile.TemporaryFile(dir=dest.parent) as body:

        def sink(cid: str, data: bytes) -> None:
            if cid in seen:
                return
            seen.add(cid)
            cid_b = cid_to_bytes(cid)
            body.write(encode_varint(len(cid_b) + len(data)) + cid_b)
            body.write(data)

        result = import_path(src, sink)
        body.seek(0)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                header = car.encode_header([result.cid])
                out.write(encode_varint(len(header)) + header)
                shutil.copyfileobj(body, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with _suppress():
                os.unlink(tmp)
            raise
    fsync_dir(str(dest.parent))
    return result


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


class CarFile:
    """Random access to the blocks of a CAR file: ``get(cid) -> bytes``."""

    def __init__(self, path: str | os.PathLike, *, max_blocks: int | None = None) -> None:
        self.path = os.fspath(path)
        self.max_blocks = max_blocks
        self._f = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        try:
            self.roots, self._index = self._scan()
        except BaseException:
            self._f.close()
            raise

    def _scan(self) -> tuple[list[str], dict[str, tuple[int, int]]]:
        counting = _Counting(self._f)
        roots, sections = car.read_car(counting)
        index: dict[str, tuple[int, int]] = {}
        for count, (cid, data) in enumerate(sections, 1):
            if self.max_blocks is not None and count > self.max_blocks:
                raise StorageError(
                    f"{self.path} holds more than {self.max_blocks:,} blocks",
                    code="export_limit",
                    hint="the CAR is larger than this export allows",
                )
            index.setdefault(canonical(cid), (counting.pos - len(data), len(data)))
        return roots, index

    def __len__(self) -> int:
        return len(self._index)

    def has(self, cid: str) -> bool:
        return canonical(cid) in self._index

    def get(self, cid: str) -> bytes:
        key = canonical(cid)
        where = self._index.get(key)
        if where is None:
            raise StorageError(f"block {key} is not in {self.path}", code="block_not_found")
        self._f.seek(where[0])
        return self._f.read(where[1])

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> CarFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Counting:
    """A reader that knows its position (``read_car`` reads sequentially)."""

    def __init__(self, f) -> None:
        self.f = f
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        return data


def verify_car(path: str | os.PathLike, root: str) -> int:
    """Check the CAR names ``root`` alone and holds its whole DAG; return the block count.

    Raises StorageError ``car_root_mismatch`` (another root), ``block_not_found``
    (a block of the DAG is missing) or ``block_hash_mismatch`` (a block does not
    hash to its CID), or ``car_invalid`` for a malformed file.
    """
    want = canonical(root)
    with CarFile(path) as cf:
        if [canonical(r) for r in cf.roots] != [want]:
            raise StorageError(
                f"the CAR's roots are {cf.roots}, expected [{want}]", code="car_root_mismatch"
            )
        seen: set[str] = set()
        stack = [want]
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            data = cf.get(cid)
            if not verify_block(cid, data):
                raise StorageError(
                    f"block {cid} does not hash to its CID", code="block_hash_mismatch"
                )
            stack.extend(iter_links(cid, data))
        return len(seen)


def export_car(
    path: str | os.PathLike,
    root: str,
    dest: str | os.PathLike,
    *,
    limits: ExportLimits = DEFAULT_LIMITS,
    symlinks: bool = False,
) -> None:
    """Write the UnixFS tree at ``root`` in the CAR at ``path`` to ``dest`` (re-hashed).

    Bounded by ``limits`` (also the number of blocks the CAR may hold); see
    ``export_to_path`` for the errors and the symlink policy.
    """
    with CarFile(path, max_blocks=limits.max_blocks) as cf:
        export_to_path(root, cf.get, dest, verify=True, limits=limits, symlinks=symlinks)


def read_file_at(
    path: str | os.PathLike, root: str, name: str, *, max_bytes: int, tail: bool = False
) -> tuple[bytes, bool]:
    """``(data, truncated)``: at most ``max_bytes`` of the top-level file ``name`` of
    the directory ``root`` in the CAR at ``path`` (its start, or its end with
    ``tail``), re-hashed; nothing is written. See ``read_file_in_dag``."""
    with CarFile(path, max_blocks=DEFAULT_LIMITS.max_blocks) as cf:
        return read_file_in_dag(root, cf.get, name, max_bytes=max_bytes, tail=tail)
