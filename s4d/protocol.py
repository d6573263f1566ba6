"""The s4 wire format, sans I/O: bytes in, frames out, and back.

A conversation on one TCP connection is a sequence of

    frame  = 4-byte big-endian length + UTF-8 JSON object   (metadata)
    stream = chunks of (8-byte big-endian length + raw bytes), ended by a
             zero-length chunk                               (bulk data)

Every request is one frame whose "op" names it; the reply is one or more
frames, with a stream between them where the op carries data (see OPS).
This module owns the encodings, the size caps (checked before anything is
allocated) and the shape of each request; it owns no sockets and imports
nothing heavy, so the client pays nothing for it and tests need no network.
"""
import _json

from s4d import limits
from s4d.errors import BadRequest, ProtocolError

# Big-endian unsigned lengths, by int.to_bytes / int.from_bytes: the `struct`
# module would be one more import (~0.4 ms) of every small cp.
FRAME_HEADER_BYTES = 4
CHUNK_HEADER_BYTES = 8

_NUMBER = (int, float)
# op -> required fields and their types. One vocabulary from CLI to handler:
# `s4ctl map-to-n` -> Client.map_to_n -> op "map_to_n" -> Server.handle_map_to_n.
#
#   put         -> {"ok"} ready, client streams data, then {"xxh3", "size"},
#                  -> {"ok", "size"}
#   get         -> {"ok", "size", "xxh3"} + exactly size raw bytes (sendfile);
#                  with "verify": true the node first checks the file against
#                  its stored checksum (for a reader that cannot take bytes back)
#   ls          -> {"entries": [[name, size|null, mtime], ...]}... then {"ok"}
#   rm          -> {"ok", "deleted"}
#   eval        -> stream of the command's stdout, then {"ok"} or an error
#   map, map_to_n, map_from_n
#               -> {"progress": ...}... then {"ok", ...} or an error
#   health      -> {"ok", figures...}
#   push        (node to node: a map's outputs for the node they belong on)
#               the request opens a stream of entries, sent back to back with
#               no wait: {"key", "size"} + exactly size raw bytes + the put
#               trailer {"xxh3", "size"}, ... then {"end": true}. The node
#               answers each entry in order, once it is published or refused:
#               {"key", "ok"} or {"key", "error", "message"} (that key alone is
#               not stored; the stream goes on), then the end with
#               {"ok", "count", "failed"}. An error frame without "key" ends the
#               stream and the connection. See PushReader.
_MAP_FIELDS = {"indir": str, "outdir": str, "cmd": str}
OPS: dict[str, dict[str, type | tuple]] = {
    "put": {"key": str},
    "get": {"key": str},
    "ls": {"prefix": str, "recursive": bool},
    "rm": {"prefix": str, "recursive": bool},
    "eval": {"key": str, "cmd": str},
    "map": _MAP_FIELDS,
    "map_to_n": _MAP_FIELDS,
    "map_from_n": _MAP_FIELDS,
    "health": {},
    "push": {},
}
OPTIONAL_FIELDS: dict[str, type | tuple] = {"timeout": _NUMBER, "glob": str, "verify": bool}
PUT_TRAILER = {"xxh3": str, "size": int}
PUSH_ENTRY = {"key": str, "size": int}


# JSON through the json package's own C core. `import json` costs ~6 ms (it
# imports `re`), a fifth of a small cp; these two objects are what json.dumps
# and json.loads call for a frame, configured as they configure them.
def _not_json(value):
    raise TypeError(f"{type(value).__name__} cannot go in a frame")


class _LoadsSettings:  # the attributes _json.make_scanner reads from a json.JSONDecoder
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__


_dumps = _json.make_encoder(None, _not_json, _json.encode_basestring_ascii, None, ":", ",",
                            False, False, True)
_scan = _json.make_scanner(_LoadsSettings)


def _loads(text: str):
    try:
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except Exception:  # the C scanner reports errors through json.decoder, not imported here
        pass
    import json  # not a bare JSON value: json.loads says why (or takes the whitespace around it)
    return json.loads(text)


def encode(msg: dict) -> bytes:
    body = "".join(_dumps(msg, 0)).encode()
    if len(body) > limits.FRAME_MAX_BYTES:
        raise BadRequest(f"frame of {len(body)} bytes exceeds {limits.FRAME_MAX_BYTES}")
    return len(body).to_bytes(FRAME_HEADER_BYTES, "big") + body


def decode_frame_header(header: bytes) -> int:
    if len(header) != FRAME_HEADER_BYTES:
        raise ProtocolError(f"a frame header is {FRAME_HEADER_BYTES} bytes, got {len(header)}")
    length = int.from_bytes(header, "big")
    if length > limits.FRAME_MAX_BYTES:
        raise ProtocolError(f"frame of {length} bytes exceeds {limits.FRAME_MAX_BYTES}")
    return length


def decode_frame_body(body: bytes) -> dict:
    try:
        msg = _loads(body.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"frame is not UTF-8 JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("frame is not a JSON object")
    return msg


def encode_chunk_header(length: int) -> bytes:
    return length.to_bytes(CHUNK_HEADER_BYTES, "big")


def decode_chunk_header(header: bytes) -> int:
    if len(header) != CHUNK_HEADER_BYTES:
        raise ProtocolError(f"a chunk header is {CHUNK_HEADER_BYTES} bytes, got {len(header)}")
    length = int.from_bytes(header, "big")
    if length > limits.CHUNK_MAX_BYTES:
        raise ProtocolError(f"chunk of {length} bytes exceeds {limits.CHUNK_MAX_BYTES}")
    return length


END_OF_STREAM = encode_chunk_header(0)


class FrameDecoder:
    """Incremental frame decoder with a bounded buffer.

    `feed` bytes as they arrive and pop frames with `next_frame`. A transport
    that reads only `bytes_wanted()` at a time never reads past a frame into
    the raw stream that may follow it, so the socket can be handed to
    splice(2) right after.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._body_len: int | None = None

    def bytes_wanted(self) -> int:
        if self._body_len is None:
            return FRAME_HEADER_BYTES - len(self._buf)
        return self._body_len - len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data
        self._parse_header()

    def _parse_header(self) -> None:
        if self._body_len is None and len(self._buf) >= FRAME_HEADER_BYTES:
            self._body_len = decode_frame_header(bytes(self._buf[:FRAME_HEADER_BYTES]))
            del self._buf[:FRAME_HEADER_BYTES]

    def next_frame(self) -> dict | None:
        if self._body_len is None or len(self._buf) < self._body_len:
            return None
        body = bytes(self._buf[:self._body_len])
        del self._buf[:self._body_len]
        self._body_len = None
        self._parse_header()
        return decode_frame_body(body)

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buf) + (FRAME_HEADER_BYTES if self._body_len is not None else 0)


def _check_fields(msg: dict, fields: dict, what: str) -> None:
    for name, typ in fields.items():
        value = msg.get(name)
        if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
            raise BadRequest(f"{what}: field {name!r} must be {_type_name(typ)}")


def _type_name(typ) -> str:
    if isinstance(typ, tuple):
        return "a number"
    return {str: "a string", bool: "a boolean", int: "an integer"}.get(typ, typ.__name__)


def check_request(msg: dict) -> str:
    """Validate a request's op and field types; return the op."""
    op = msg.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise BadRequest(f"unknown op {op!r}")
    _check_fields(msg, OPS[op], op)
    for name, typ in OPTIONAL_FIELDS.items():
        if msg.get(name) is not None:
            _check_fields(msg, {name: typ}, op)
    if isinstance(msg.get("timeout"), _NUMBER) and not msg["timeout"] > 0:
        raise BadRequest(f"{op}: timeout must be positive")
    if isinstance(msg.get("cmd"), str) and len(msg["cmd"]) > limits.CMD_MAX_BYTES:
        raise BadRequest(f"{op}: command longer than {limits.CMD_MAX_BYTES} bytes")
    return op


def check_put_trailer(msg: dict) -> None:
    if "error" in msg:
        raise BadRequest(f"client aborted the put: {msg.get('message', msg['error'])}")
    _check_fields(msg, PUT_TRAILER, "put trailer")


# --- push: a stream of many keys on one connection ----------------------------------
def encode_push_head(key: str, size: int) -> bytes:
    """What goes before an entry's `size` raw bytes."""
    return encode({"key": key, "size": size})


def encode_push_tail(size: int, digest: str) -> bytes:
    """What goes after an entry's bytes: the put trailer."""
    return encode({"xxh3": digest, "size": size})


def encode_push_end() -> bytes:
    return encode({"end": True})


def push_result(key: str, error: dict | None = None) -> dict:
    """The node's answer to one entry: published, or the error (wire form) that kept it out."""
    return {"key": key, **(error or {"ok": True})}


def check_push_entry(msg: dict) -> tuple[str, int]:
    _check_fields(msg, PUSH_ENTRY, "push entry")
    if not 0 <= msg["size"] <= limits.CHUNK_MAX_BYTES:
        raise ProtocolError(f"push entry: size {msg['size']} is outside 0..{limits.CHUNK_MAX_BYTES}")
    return msg["key"], msg["size"]


def check_push_trailer(msg: dict, size: int) -> str:
    """The trailer of an entry of `size` bytes; returns its xxh3."""
    _check_fields(msg, PUT_TRAILER, "push trailer")
    if msg["size"] != size:
        raise ProtocolError(f"push trailer: size {msg['size']} after an entry of {size} bytes")
    return msg["xxh3"]


class PushReader:
    """The receiving side of a push stream, sans I/O: bytes in, events out.

    `feed` bytes as they arrive; `next_event` returns, in stream order,
    ("entry", key, size), ("data", bytes) pieces of that entry's bytes,
    ("trailer", xxh3) after its last byte, ("end",), or None when it needs
    more bytes. Big entries need not pass through here: when the buffer is
    empty mid-entry, `data_left()` bytes may go straight from the socket to a
    file (splice), reported with `skip(n)`. The buffer holds at most what one
    feed brought plus one partial frame, so memory stays bounded by the
    transport's read size and FRAME_MAX_BYTES.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._state = "frame"  # frame -> (data -> trailer -> frame)... -> done
        self._left = 0  # bytes of the current entry not yet handed out
        self._size = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def data_left(self) -> int:
        """Bytes of the current entry still to come (0 between entries)."""
        return self._left if self._state == "data" else 0

    def skip(self, n: int) -> None:
        """n bytes of the current entry arrived outside the buffer (only when it is empty)."""
        if self.buffered() or not 0 < n <= self.data_left():
            raise ValueError(f"skip({n}) with {self.buffered()} bytes buffered, {self.data_left()} left")
        self._left -= n
        if not self._left:
            self._state = "trailer"

    def _frame(self) -> dict | None:
        avail = self.buffered()
        if avail < FRAME_HEADER_BYTES:
            return None
        length = decode_frame_header(bytes(self._buf[self._pos:self._pos + FRAME_HEADER_BYTES]))
        if avail < FRAME_HEADER_BYTES + length:
            return None
        start = self._pos + FRAME_HEADER_BYTES
        self._pos = start + length
        return decode_frame_body(bytes(self._buf[start:self._pos]))

    def next_event(self) -> tuple | None:
        if self._state == "data":
            n = min(self._left, self.buffered())
            if not n:
                return None
            piece = bytes(self._buf[self._pos:self._pos + n])
            self._pos += n
            self._left -= n
            if not self._left:
                self._state = "trailer"
            return ("data", piece)
        if self._state == "done":
            if self.buffered():
                raise ProtocolError("bytes after the end of a push stream")
            return None
        msg = self._frame()
        if msg is None:
            return None
        if self._state == "trailer":
            digest = check_push_trailer(msg, self._size)
            self._state = "frame"
            return ("trailer", digest)
        if msg.get("end") is True and len(msg) == 1:
            self._state = "done"
            if self.buffered():
                raise ProtocolError("bytes after the end of a push stream")
            return ("end",)
        key, size = check_push_entry(msg)
        self._size = self._left = size
        self._state = "data" if size else "trailer"
        return ("entry", key, size)
