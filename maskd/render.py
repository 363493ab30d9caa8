"""How daemon data looks to people: short ids, sizes, prices, durations, tables.

One place for these so ``mask`` and ``mask top`` agree. The formatters are
pure (``now`` is passed in) and tolerate missing or odd values, because the
daemon may be newer or older than the client: a missing field prints "—"
rather than crashing a table.

Text from strangers: almost everything shown here came from a peer or a job
(a GPU name, an address, a job's name, error, logs). It is never markup
(rich reads ``[/x]`` in a ``str`` cell as a closing tag and raises) and never
reaches the terminal raw (ESC, OSC, BEL, C1 and bidi overrides would move the
cursor, retitle the window or reorder what people read). :func:`safe_text`
makes such characters visible (``\x1b``, ``\u202e``) and :func:`untrusted`
wraps the result in a ``rich.text.Text``, which is never parsed as markup.
Every table cell below goes through them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

__all__ = [
    "DASH",
    "CELL_MAX_CHARS",
    "safe_text",
    "untrusted",
    "safe_markup",
    "TOKEN_DECIMALS",
    "short_id",
    "format_mb",
    "format_duration",
    "format_expires_in",
    "format_latency",
    "format_score",
    "format_price",
    "format_wall_ms",
    "proof_verdict",
    "zk_rows",
    "JOB_STATE_STYLES",
    "job_state_style",
    "gpus_summary",
    "offer_summary",
    "first_addr",
    "executors_summary",
    "node_table",
    "peers_table",
    "offers_table",
]

DASH = "—"
# MASK is an 18-decimal token; prices travel as base units in decimal strings.
TOKEN_DECIMALS = 18


# A table cell never needs more; a peer may send more.
CELL_MAX_CHARS = 256

# Characters a terminal might act on or that change how text reads: controls
# (C0, DEL, C1), format characters (bidi overrides and isolates, zero-width
# marks, invisible tags), line/paragraph separators, surrogates, private-use
# and unassigned code points. Printable text and spaces are left alone.
_SHOWN_AS_IS = frozenset({"Zs"})
_SUSPECT = re.compile(r"[^\x20-\x7e]")


_SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# What rich reads as a tag, with any backslashes before it (rich.markup's own pattern).
_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def _visible(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape_char(match: re.Match[str], keep: str) -> str:
    char = match.group()
    if char in keep or (char.isprintable() or unicodedata.category(char) in _SHOWN_AS_IS):
        return char
    return _visible(char)


def safe_text(value: Any, *, multiline: bool = False, max_chars: int | None = None) -> str:
    """``str(value)`` with every control, format or bidi character made visible.

    ``ESC`` becomes ``\\x1b``, ``U+202E`` becomes ``\\u202e``. ``multiline``
    keeps ``\\n`` and ``\\t`` (logs); ``\\r`` is always shown, since it can
    overwrite what came before it on the line. ``max_chars`` cuts the result
    with "…". The result may contain ``[``: show it as ``Text``, not markup.
    """
    text = value if isinstance(value, str) else str(value)
    keep = "\n\t" if multiline else ""
    if not text.isascii() or not text.isprintable():
        text = _SUSPECT.sub(lambda m: _escape_char(m, keep), text)
    if max_chars is not None and len(text) > max_chars:
        text = text[: max(max_chars - 1, 0)] + "…"
    return text


def untrusted(
    value: Any, *, multiline: bool = False, max_chars: int | None = None, style: str = ""
) -> Text:
    """Text from a stranger, ready for rich or Textual: visible escapes, no markup."""
    return Text(safe_text(value, multiline=multiline, max_chars=max_chars), style=style)


def safe_markup(value: Any, *, multiline: bool = False, max_chars: int | None = None) -> str:
    """For the places that only take markup strings: renders as ``safe_text(value)``.

    Like ``rich.markup.escape``, without the backslash it appends to a string
    ending in one (meant for joining markup; alone, it would show).
    """
    text = safe_text(value, multiline=multiline, max_chars=max_chars)
    return _MARKUP_TAG.sub(lambda m: f"{m[1]}{m[1]}\\{m[2]}", text)


def _cell(value: Any, style: str = "") -> Text:
    return untrusted(value, max_chars=CELL_MAX_CHARS, style=style)


def short_id(value: Any, head: int = 8, tail: int = 4) -> str:
    """``12D3KooWAbCd…wXyZ``: enough to tell peers apart at a glance."""
    if not value:
        return DASH
    text = str(value)
    if len(text) <= head + tail + 1:
        return text
    return f"{text[:head]}…{text[-tail:]}"


def format_mb(mb: Any) -> str:
    """Mebibytes for people: ``512 MiB``, ``8 GiB``, ``1.5 TiB``."""
    if not isinstance(mb, int | float) or isinstance(mb, bool):
        return DASH
    for unit, size in (("TiB", 1024 * 1024), ("GiB", 1024)):
        if mb >= size:
            return f"{mb / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{mb:g} MiB"


def format_duration(seconds: Any) -> str:
    """Two most significant units: ``3d 4h``, ``2h 5m``, ``5m 3s``, ``42s``."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return DASH
    total = int(max(seconds, 0))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{value}{unit}" for value, unit in parts[:2])


def format_expires_in(expires_at: Any, now: float) -> str:
    if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
        return DASH
    if expires_at <= now:
        return "expired"
    return format_duration(expires_at - now)


def format_latency(ms: Any) -> str:
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return DASH
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def format_score(score: Any) -> str:
    if not isinstance(score, int | float) or isinstance(score, bool):
        return DASH
    return f"{score:.2f}"


def format_price(base_units: Any) -> str:
    """Base units (decimal string) to whole MASK: ``"2500000000000000"`` → ``0.0025``."""
    try:
        value = Decimal(str(base_units)) / (Decimal(10) ** TOKEN_DECIMALS)
    except (InvalidOperation, ValueError):
        return DASH
    if not value.is_finite():
        return DASH
    text = format(value.normalize(), "f")
    return text


def format_wall_ms(ms: Any) -> str:
    """Milliseconds of run time: ``420 ms``, ``12.3 s``, then ``5m 3s`` and up."""
    if not isinstance(ms, int | float) or isinstance(ms, bool) or ms < 0:
        return DASH
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return format_duration(ms / 1000)


def proof_verdict(attempt: Any) -> str:
    """One provider's proof, checked: ``valid (native, 3.1 ms)`` or ``invalid: <why>``."""
    if not isinstance(attempt, Mapping):
        return DASH
    if attempt.get("valid") is True:
        ms = attempt.get("ms")
        took = f", {ms:.1f} ms" if isinstance(ms, int | float) and not isinstance(ms, bool) else ""
        return f"valid ({attempt.get('backend') or DASH}{took})"
    return f"invalid: {attempt.get('reason') or 'no reason given'}"


def _signals(public: Any, names: Sequence[str]) -> str:
    if not isinstance(public, Mapping):
        return DASH
    return "  ".join(f"{name}={public.get(name, DASH)}" for name in names) or DASH


def zk_rows(job: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``mask job`` rows for a zk job (label, value): its circuit, the proof of the
    latest result and its public signals by name, and every result rejected.

    Values hold text from providers (reasons, signals): print them as untrusted.
    """
    rows: list[tuple[str, str]] = []
    circuit = job.get("circuit")
    if isinstance(circuit, Mapping):
        rows.append(
            (
                "circuit",
                f"{circuit.get('name') or DASH}  {circuit.get('cid') or DASH}"
                f"  id {circuit.get('id') or DASH}",
            )
        )
    verification = job.get("verification")
    attempts = verification.get("attempts") if isinstance(verification, Mapping) else None
    attempts = [a for a in attempts if isinstance(a, Mapping)] if isinstance(attempts, list) else []
    if attempts:
        last = attempts[-1]
        verdict = proof_verdict(last)
        if last.get("valid") is not True:
            verdict += f" (from {short_id(last.get('provider_peer'))})"
        rows.append(("proof", verdict))
        public = last.get("public")
        if isinstance(public, Mapping):
            names = [str(n) for n in public if n != "binding"]
            n_out = circuit.get("outputs") if isinstance(circuit, Mapping) else None
            if isinstance(n_out, int) and not isinstance(n_out, bool) and 0 <= n_out <= len(names):
                rows.append(("outputs", _signals(public, names[:n_out])))
                if names[n_out:]:
                    rows.append(("public inputs", _signals(public, names[n_out:])))
            else:
                rows.append(("public", _signals(public, names)))
        rejected = [a for a in attempts[:-1] if a.get("valid") is not True]
    else:
        error = job.get("error")
        failures = error.get("verification_failures") if isinstance(error, Mapping) else None
        rejected = (
            [f for f in failures if isinstance(f, Mapping)] if isinstance(failures, list) else []
        )
    for a in rejected:
        rows.append(("rejected", f"{short_id(a.get('provider_peer'))}: {a.get('reason') or DASH}"))
    return rows


# Job states people should notice: in flight (yellow), done (green), ended badly (red).
JOB_STATE_STYLES: Mapping[str, str] = {
    "running": "yellow",
    "verifying": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "red",
}


def job_state_style(state: Any) -> str:
    """A Rich style for a job state; "" (plain) for pending, matched and unknown states."""
    return JOB_STATE_STYLES.get(str(state), "")


def gpus_summary(gpus: Any) -> str:
    """``2× A100 (80 GiB)``; mixed cards are listed one by one."""
    if not isinstance(gpus, Sequence) or isinstance(gpus, str) or not gpus:
        return DASH
    counts: dict[str, int] = {}
    for gpu in gpus:
        if isinstance(gpu, Mapping):
            label = f"{gpu.get('name') or 'gpu'} ({format_mb(gpu.get('memory_mb'))})"
        else:
            label = str(gpu)
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n}× {label}" if n > 1 else label for label, n in counts.items())


def offer_summary(offer: Any) -> str:
    """``4 cpu · 8 GiB · 0 gpu``: what a peer sells, in one cell."""
    if not isinstance(offer, Mapping):
        return DASH
    gpus = offer.get("gpus")
    gpu_count = len(gpus) if isinstance(gpus, Sequence) and not isinstance(gpus, str) else 0
    cpu = offer.get("cpu", DASH)
    return f"{cpu} cpu · {format_mb(offer.get('memory_mb'))} · {gpu_count} gpu"


def executors_summary(executors: Any) -> str:
    """``wasm, native``."""
    if isinstance(executors, list | tuple) and executors:
        return ", ".join(map(str, executors))
    return DASH


def first_addr(addrs: Any) -> str:
    """The first address, with ``+N`` when there are more."""
    if not isinstance(addrs, Sequence) or isinstance(addrs, str) or not addrs:
        return DASH
    more = f" +{len(addrs) - 1}" if len(addrs) > 1 else ""
    return f"{addrs[0]}{more}"


def _number(value: Any) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _lines(value: Any) -> Text:
    """A cell that may hold several lines (a list is one per line), each made safe."""
    lines = _text(value).split("\n")
    return Text("\n".join(safe_text(line, max_chars=CELL_MAX_CHARS) for line in lines))


def _text(value: Any) -> str:
    if value is None or value == "":
        return DASH
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or DASH
    if isinstance(value, list | tuple):
        return "\n".join(str(v) for v in value) or DASH
    return str(value)


# --- tables (rich) ---------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


_NODE_FIELDS = (
    ("peer_id", "peer id"),
    ("account", "account"),
    ("role", "role"),
    ("version", "version"),
    ("peers", "peers"),
    ("offers", "offers"),
    ("uptime_s", "uptime"),
    ("addrs", "addresses"),
    ("drops", "drops"),
    ("data_dir", "data dir"),
)


def node_table(info: Mapping[str, Any]) -> Table:
    """``mask status``: one row per field; unknown fields are shown too."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, label in _NODE_FIELDS:
        value = info.get(key)
        if key == "uptime_s":
            table.add_row(label, format_duration(value))
        elif key == "drops" and isinstance(value, Mapping):
            drops = sorted(value.items(), key=lambda kv: (-_number(kv[1]), str(kv[0])))
            lines = [safe_text(f"{n} {reason}", max_chars=CELL_MAX_CHARS) for reason, n in drops]
            table.add_row(label, Text("\n".join(lines) or "none"))
        else:
            table.add_row(label, _lines(value))
    known = {key for key, _ in _NODE_FIELDS}
    for key in sorted(str(k) for k in info if k not in known):
        table.add_row(_cell(key.replace("_", " ")), _lines(info[key]))
    return table


def peers_table(peers: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title=_count(len(peers), "peer"), title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("peer", overflow="fold")
    table.add_column("address", overflow="fold")
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("offers", no_wrap=True)
    for peer in peers:
        table.add_row(
            _cell(peer.get("peer_id") or DASH),
            _cell(first_addr(peer.get("addrs"))),
            _cell(format_latency(peer.get("latency_ms"))),
            _cell(format_score(peer.get("score"))),
            _cell(offer_summary(peer.get("offer"))),
        )
    return table


def offers_table(offers: Sequence[Mapping[str, Any]], now: float) -> Table:
    table = Table(title=_count(len(offers), "offer"), title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("offer", no_wrap=True)
    table.add_column("peer", no_wrap=True)
    table.add_column("cpu", justify="right")
    table.add_column("mem", justify="right", no_wrap=True)
    table.add_column("disk", justify="right", no_wrap=True)
    table.add_column("gpus")
    table.add_column("executors")
    table.add_column("MASK/cpu-h", justify="right")
    table.add_column("expires", justify="right", no_wrap=True)
    for offer in offers:
        prices = offer.get("prices") if isinstance(offer.get("prices"), Mapping) else {}
        executors = offer.get("executors")
        table.add_row(
            _cell(short_id(offer.get("offer_id"), 6, 4)),
            _cell(short_id(offer.get("peer_id"))),
            _cell(_text(offer.get("cpu"))),
            _cell(format_mb(offer.get("memory_mb"))),
            _cell(format_mb(offer.get("disk_mb"))),
            _cell(gpus_summary(offer.get("gpus"))),
            _cell(executors_summary(executors)),
            _cell(format_price(prices.get("cpu_core_hour"))),
            _cell(format_expires_in(offer.get("expires_at"), now)),
        )
    return table
