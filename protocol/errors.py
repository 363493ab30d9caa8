"""The one exception tree of maskd.

    MaskError                 code, message for people, hint
    ├── ConfigError           a bad configuration value (exit 2)
    ├── IdentityError         a key file that cannot be read or decrypted
    ├── WireError             a peer's message that fails validation
    ├── RpcError              an RPC call the daemon refused (carries a JSON-RPC code)
    ├── DaemonUnavailable     no daemon answers on the socket
    ├── StorageError          block store, CIDs, encryption
    └── JobError              job specs and job lifecycle

Every error has a stable machine-readable ``code`` (snake_case), a ``message``
for people, and an optional ``hint`` that says what to do about it. Peers'
mistakes never surface as exceptions to users: they become verdicts (p2p).
"""

from __future__ import annotations


class MaskError(Exception):
    code = "error"

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        d = {"code": self.code, "message": self.message}
        if self.hint:
            d["hint"] = self.hint
        return d


class ConfigError(MaskError):
    code = "config_invalid"


class IdentityError(MaskError):
    code = "identity_invalid"


class WireError(MaskError):
    code = "wire_invalid"


class DaemonUnavailable(MaskError):
    code = "daemon_unavailable"


class RpcError(MaskError):
    """An error answered by the daemon. ``rpc_code`` is the JSON-RPC error code."""

    code = "rpc_error"

    def __init__(
        self,
        message: str,
        *,
        rpc_code: int = -32000,
        hint: str | None = None,
        code: str | None = None,
        data: dict | None = None,
    ):
        super().__init__(message, hint=hint, code=code)
        self.rpc_code = rpc_code
        self.data = data or {}


class StorageError(MaskError):
    code = "storage_error"


class JobError(MaskError):
    code = "job_error"
