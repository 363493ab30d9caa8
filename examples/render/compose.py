"""Split a render into tiles and join the rendered tiles into one PNG.

Pure Python, standard library only (zlib and struct write the PNG), so a
requester can run it anywhere. The render job (render.wasm) draws one tile per
run; the requester submits one job per tile and composes the outputs:

    from compose import plan_tiles, compose
    plan = plan_tiles(640, 480, 160)            # 12 arg lists, one job each
    # ... submit job.toml once per plan entry with args = entry, collect
    # each job's /out/tile.ppm ...
    png = compose(zip(plan, tile_ppms), 640, 480)

Command line (tiles named by their position, e.g. from `mask result`):

    python3 compose.py plan 640 480 160          # one JSON arg list per line
    python3 compose.py compose 640 480 out.png 0,0=a/tile.ppm 160,0=b/tile.ppm ...
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["compose", "encode_png", "parse_ppm", "plan_tiles"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def plan_tiles(width: int, height: int, tile: int) -> list[list[str]]:
    """The render args for every tile of a ``width`` x ``height`` image.

    Tiles are ``tile`` x ``tile`` pixels, row by row from the top left; those
    on the right and bottom edges are cut to fit. Each entry is the job's
    ``args``: ``[width, height, tile_x, tile_y, tile_w, tile_h]`` as strings.
    """
    if width < 1 or height < 1 or tile < 1:
        raise ValueError("width, height and tile must be at least 1")
    plan = []
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            tw, th = min(tile, width - x), min(tile, height - y)
            plan.append([str(n) for n in (width, height, x, y, tw, th)])
    return plan


def parse_ppm(data: bytes) -> tuple[int, int, bytes]:
    """``(width, height, rgb)`` from a binary PPM (P6, maxval 255)."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":  # a comment runs to the end of the line
            while pos < len(data) and data[pos : pos + 1] != b"\n":
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ValueError("truncated PPM header")
        fields.append(data[start:pos])
    magic, w, h, maxval = fields
    if magic != b"P6" or maxval != b"255":
        raise ValueError(f"not a P6 PPM with maxval 255: {magic!r} {maxval!r}")
    width, height = int(w), int(h)
    rgb = data[pos + 1 :]  # exactly one whitespace byte after maxval
    if len(rgb) != width * height * 3:
        raise ValueError(f"PPM {width}x{height} needs {width * height * 3} bytes, has {len(rgb)}")
    return width, height, rgb


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (rows top to bottom, no padding)."""
    stride = width * 3
    if len(rgb) != stride * height:
        raise ValueError(f"{width}x{height} RGB needs {stride * height} bytes, got {len(rgb)}")
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def compose(tiles: Iterable[tuple[Sequence[str | int], bytes]], width: int, height: int) -> bytes:
    """Join rendered tiles into one PNG of ``width`` x ``height``.

    ``tiles`` holds ``(args, ppm)`` pairs: a tile's arg list from
    :func:`plan_tiles` (at least ``tile_x`` and ``tile_y`` at positions 2 and
    3) and its ``tile.ppm`` bytes. Every pixel must be covered exactly once.
    """
    canvas = bytearray(width * height * 3)
    covered = bytearray(width * height)
    for args, ppm in tiles:
        x0, y0 = int(args[2]), int(args[3])
        tw, th, rgb = parse_ppm(ppm)
        if len(args) >= 6 and (int(args[4]), int(args[5])) != (tw, th):
            raise ValueError(f"tile at ({x0},{y0}) is {tw}x{th}, the plan said {args[4]}x{args[5]}")
        if x0 < 0 or y0 < 0 or x0 + tw > width or y0 + th > height:
            raise ValueError(f"tile {tw}x{th} at ({x0},{y0}) is outside {width}x{height}")
        for row in range(th):
            at = (y0 + row) * width + x0
            if any(covered[at : at + tw]):
                raise ValueError(f"tile at ({x0},{y0}) overlaps another tile")
            covered[at : at + tw] = b"\x01" * tw
            canvas[at * 3 : (at + tw) * 3] = rgb[row * tw * 3 : (row + 1) * tw * 3]
    if not all(covered):
        missing = covered.index(0)
        raise ValueError(f"no tile covers pixel ({missing % width},{missing // width})")
    return encode_png(width, height, bytes(canvas))


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "plan":
        for args in plan_tiles(int(argv[1]), int(argv[2]), int(argv[3])):
            print(json.dumps(args))
        return 0
    if len(argv) >= 5 and argv[0] == "compose":
        width, height, out = int(argv[1]), int(argv[2]), Path(argv[3])
        tiles = []
        for item in argv[4:]:
            pos, _, path = item.partition("=")
            x, _, y = pos.partition(",")
            tiles.append(([str(width), str(height), x, y], Path(path).read_bytes()))
        out.write_bytes(compose(tiles, width, height))
        print(f"wrote {out} ({width}x{height}, {len(tiles)} tiles)")
        return 0
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
