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
#                  its stored checksum (for a reader that cannot take bytes back).
#                  With "offset" and/or "length" (integers >= 0): only the bytes
#                  [offset, offset + length) that exist, as a read(2) past the end
#                  gives: fewer, or none; "xxh3" is then the hash of those bytes as
#                  the node read them, "total" the key's whole size and "mtime"
#                  its modification time (epoch seconds)
#   ls          -> {"entries": [[name, size|null, mtime], ...]}... then {"ok"}
#   rm          -> {"ok", "deleted"}
#   eval        -> stream of the command's stdout, then {"ok"} or an error
#   map, map_to_n, map_from_n
#               -> {"progress": ...}... then {"ok", ...} or an error
#   health      -> {"ok", figures...}
#   s3_import, s3_export
#               -> {"progress": ...}... then {"ok", ...} or an error; "key" is
#                  the s4 key (or with "recursive" the s4 directory), "bucket"
#                  and "object" the S3 side; "endpoint" optional (s4d/s3.py)
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
    "s3_import": {"key": str, "bucket": str, "object": str, "recursive": bool},
    "s3_export": {"key": str, "bucket": str, "object": str, "recursive": bool},
}
OPTIONAL_FIELDS: dict[str, type | tuple] = {"timeout": _NUMBER, "glob": str, "verify": bool,
                                            "endpoint": str,
                                            # maps: the client's conf, to check its node order
                                            "nodes": list, "node_index": int}
GET_RANGE_FIELDS = ("offset", "length")  # optional on get only: non-negative integers
PUT_TRAILER = {"xxh3": str, "size": int}


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
    for name in GET_RANGE_FIELDS:
        if msg.get(name) is not None:
            if op != "get":
                raise BadRequest(f"{op}: field {name!r} belongs to get only")
            _check_fields(msg, {name: int}, op)
            if not 0 <= msg[name] <= limits.CHUNK_MAX_BYTES:
                raise BadRequest(f"get: {name} must be between 0 and {limits.CHUNK_MAX_BYTES}")
    return op


def get_range(msg: dict, size: int) -> tuple[int, int]:
    """(offset, length) that a checked get request asks of a key of `size` bytes,
    clipped to the key as read(2) clips: a range past the end is empty."""
    offset = min(msg.get("offset") or 0, size)
    length = msg.get("length")
    return offset, size - offset if length is None else min(length, size - offset)


def check_put_trailer(msg: dict) -> None:
    if "error" in msg:
        raise BadRequest(f"client aborted the put: {msg.get('message', msg['error'])}")
    _check_fields(msg, PUT_TRAILER, "put trailer")
