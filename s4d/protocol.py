"""The s4 wire format, sans I/O: bytes in, frames out, and back.

A conversation on one TCP connection is a sequence of

    frame  = 4-byte big-endian length + UTF-8 JSON object   (metadata)
    stream = chunks of (8-byte big-endian length + raw bytes), ended by a
             zero-length chunk                               (bulk data)

Every request is one frame whose "op" names it; the reply is one or more
frames, with a stream between them where the op carries data (see OPS).
This module owns the encodings, the size caps (checked before anything is
allocated) and the shape of each request; it owns no sockets and imports
nothing but json, so the client pays little for it and tests need no network.
"""
import json

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
}
OPTIONAL_FIELDS: dict[str, type | tuple] = {"timeout": _NUMBER, "glob": str, "verify": bool}
PUT_TRAILER = {"xxh3": str, "size": int}


# JSON by the standard library's json, strict both ways: no NaN or Infinity
# is sent (allow_nan=False) or accepted (parse_constant refuses them), so
# every frame is plain JSON any peer can read. Its C encoder and scanner do
# the work. (Measured against the alternatives, bench/RESULTS.md: orjson and
# msgspec each import in far longer than json's ~6 ms, which is mostly `re`.)
def _not_json(value):
    raise TypeError(f"{type(value).__name__} cannot go in a frame")


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


_encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"),
                            default=_not_json)
_decoder = json.JSONDecoder(parse_constant=_no_constant)


def encode(msg: dict) -> bytes:
    try:
        body = _encoder.encode(msg).encode()
    except ValueError:  # allow_nan=False
        raise BadRequest("a frame cannot hold NaN or Infinity (not JSON)") from None
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
        msg = _decoder.decode(body.decode())
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
