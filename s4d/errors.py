"""Error codes on the wire and the exceptions they stand for, in one place.

The daemon raises these anywhere; the connection boundary turns one into a
reply frame exactly once (`to_wire`). The client turns the frame back into the
same class (`from_wire`) and prints its one-line message. `ProtocolError`
blames the peer for bytes that are not s4 frames.
"""

class S4Error(Exception):
    """Base class: `code` goes on the wire, the message is the one line a user sees."""

    code = "error"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(S4Error):
    code = "bad_request"


class BadKey(S4Error):
    code = "bad_key"


class NotFound(S4Error):
    code = "not_found"


class Exists(S4Error):
    code = "exists"


class Busy(S4Error):
    code = "busy"


class NoSpace(S4Error):
    code = "no_space"


class ChecksumMismatch(S4Error):
    code = "checksum_mismatch"


class Timeout(S4Error):
    code = "timeout"


class CommandFailed(S4Error):
    code = "cmd_failed"


class Unavailable(S4Error):
    """A node could not be reached or the connection broke."""

    code = "unavailable"


class ProtocolError(S4Error):
    """The peer sent bytes that are not a valid frame or chunk."""

    code = "protocol"


class IOFailed(S4Error):
    """The node's file system refused an operation (permission, I/O error): not
    the request's fault and not a bug; the message names the node and why."""

    code = "io_failed"


class Internal(S4Error):
    code = "internal"


BY_CODE = {cls.code: cls for cls in (
    BadRequest, BadKey, NotFound, Exists, Busy, NoSpace, ChecksumMismatch,
    Timeout, CommandFailed, Unavailable, ProtocolError, IOFailed, Internal)}


def to_wire(exc: S4Error) -> dict:
    return {"error": exc.code, "message": exc.message, **exc.details}


def from_wire(msg: dict) -> S4Error:
    cls = BY_CODE.get(msg.get("error"), S4Error)
    details = {k: v for k, v in msg.items() if k not in ("error", "message")}
    return cls(str(msg.get("message", msg.get("error"))), **details)
