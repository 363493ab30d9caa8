"""The RPC socket's wire: JSON-RPC 2.0, one JSON object per line (docs/architecture.md).

Framing (``LineFramer``), encoding, and parsing one request line into
``(id, method, params)`` or a typed rejection; shared by the daemon's server
(maskd.rpc), the SDK (maskd.client) and ``mask top``'s client. A line is
checked for size and nesting before it is decoded (protocol.codec).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from protocol.codec import DECODE_ERRORS, MAX_NESTING, NestingTooDeep, decode_json
from protocol.errors import RpcError

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000

DEFAULT_MAX_LINE_BYTES = 1 << 20  # one request or answer line
DEFAULT_MAX_NESTING = MAX_NESTING  # of a request's JSON: bounded before it is decoded


class LineTooLong(Exception):
    """A line exceeded the framer's limit; the stream cannot be resynchronised."""


class LineFramer:
    """Splits a byte stream into newline-terminated lines, bounded in size.

    Pure: bytes in, lines out. Shared by the server and every client so the
    framing rules (and the size limit) live in one place.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete lines (without newline)."""
        scan_from = len(self._buffer)
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", max(start, scan_from))
            if end < 0:
                break
            if end - start > self.max_line_bytes:
                raise LineTooLong(end - start)
            lines.append(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self.max_line_bytes:
            raise LineTooLong(len(self._buffer))
        return lines

    def finish(self) -> bytes | None:
        """At end of stream: a trailing line that had no newline, if any."""
        rest = bytes(self._buffer).strip()
        self._buffer.clear()
        return rest or None


_encoder = msgspec.json.Encoder()


def encode_message(message: Mapping[str, Any]) -> bytes:
    """One wire line. msgspec encodes dicts, lists, Structs and dataclasses."""
    return _encoder.encode(message) + b"\n"


def error_from_response(error: Any) -> RpcError:
    """Turn a JSON-RPC ``error`` member into the RpcError a client raises."""
    if not isinstance(error, dict):
        return RpcError(f"malformed error from daemon: {error!r}", rpc_code=INTERNAL_ERROR)
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    rpc_code = error.get("code")
    return RpcError(
        str(error.get("message", "unknown error")),
        rpc_code=rpc_code if isinstance(rpc_code, int) else INTERNAL_ERROR,
        hint=data.get("hint") if isinstance(data.get("hint"), str) else None,
        code=data.get("code") if isinstance(data.get("code"), str) else None,
        data=data,
    )


def _error(
    req_id: Any, rpc_code: int, message: str, *, code: str, hint: str | None = None
) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": req_id,
        "error": {"code": rpc_code, "message": message, "data": {"code": code, "hint": hint}},
    }


def _result(req_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "result": result}


class _Reject(Exception):
    """A request refused before it reaches a handler; carries the response."""

    def __init__(self, response: dict[str, Any] | None) -> None:
        super().__init__()
        self.response = response


_NO_ID = object()  # a notification: the client wants no response


def _invalid(req_id: Any, message: str, rpc_code: int = INVALID_REQUEST) -> _Reject:
    code = "invalid_params" if rpc_code == INVALID_PARAMS else "invalid_request"
    return _Reject(_error(req_id, rpc_code, message, code=code))


def _parse_request(
    line: bytes, max_nesting: int = DEFAULT_MAX_NESTING
) -> tuple[Any, str, dict[str, Any]]:
    """Validate one line as a request: (id or _NO_ID, method, params).

    Raises _Reject with the error response, or with None where JSON-RPC says a
    notification gets no answer even when it is wrong.
    """
    try:
        message = decode_json(line, max_depth=max_nesting)
    except NestingTooDeep as exc:
        raise _Reject(
            _error(
                None,
                PARSE_ERROR,
                f"Parse error: {exc.message}",
                code="request_too_deep",
                hint="requests are objects of named params; send data by path or CID",
            )
        ) from None
    except DECODE_ERRORS as exc:  # UnicodeDecodeError: a string that is not UTF-8
        raise _Reject(
            _error(None, PARSE_ERROR, f"Parse error: {exc}", code="parse_error")
        ) from None
    if not isinstance(message, dict):
        raise _invalid(None, "Invalid request: expected a JSON object (batches are not supported)")
    req_id = message.get("id", _NO_ID)
    if req_id is not _NO_ID and (
        isinstance(req_id, bool) or not isinstance(req_id, str | int | float | type(None))
    ):
        raise _invalid(None, "Invalid request: bad id")
    reply_id = None if req_id is _NO_ID else req_id
    method = message.get("method")
    if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
        raise _invalid(reply_id, 'Invalid request: needs "jsonrpc": "2.0" and a string "method"')
    params = message.get("params", {})
    if params is None or params == []:
        params = {}
    if not isinstance(params, dict):
        if req_id is _NO_ID:
            raise _Reject(None)
        raise _invalid(
            reply_id,
            f"Invalid params for {method}: expected an object of named params",
            INVALID_PARAMS,
        )
    return req_id, method, params
