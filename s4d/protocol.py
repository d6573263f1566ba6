"""The s4 wire format, sans I/O: bytes in, frames out, and back.

A conversation on one TCP connection is a sequence of

    frame  = 4-byte big-endian length + UTF-8 JSON object   (metadata)
    stream = chunks of (8-byte big-endian length + raw bytes), ended by a
             zero-length chunk                               (bulk data)

Every request is one frame whose "op" names it; the reply is one or more
frames, with a stream between them where the op carries data (see OPS).
This module owns the encodings, the size caps (checked before anything is
allocated) and the shape of each request; it owns no sockets and imports
nothing heavy (json only for frames that are not flat), so the client pays
nothing for it and tests need no network.
"""
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
#               -> {"progress": true, "done", "total", "bytes"}... then
#                  {"ok", "done", "total", "bytes"} or an error (flat frames, as
#                  the request is when CMD needs no escaping: a map's client
#                  then never imports json)
#   health      -> {"ok", figures...}
#   s3_import, s3_export
#               -> progress frames as a map's, then {"ok", ...} or an error; "key" is
#                  the s4 key (or with "recursive" the s4 directory), "bucket"
#                  and "object" the S3 side; "endpoint" optional (s4d/s3.py)
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
    "s3_import": {"key": str, "bucket": str, "object": str, "recursive": bool},
    "s3_export": {"key": str, "bucket": str, "object": str, "recursive": bool},
    "push": {},
}
OPTIONAL_FIELDS: dict[str, type | tuple] = {"timeout": _NUMBER, "glob": str, "verify": bool,
                                            "endpoint": str,
                                            # maps: where the client's conf puts this node, in how
                                            # many: a conf that orders the nodes otherwise is refused
                                            "node_count": int, "node_index": int}
GET_RANGE_FIELDS = ("offset", "length")  # optional on get only: non-negative integers
PUT_TRAILER = {"xxh3": str, "size": int}
PUSH_ENTRY = {"key": str, "size": int}


# JSON by the standard library's json, strict both ways: no NaN or Infinity
# is sent (allow_nan=False) or accepted (parse_constant refuses them), so
# every frame is plain JSON any peer can read; its C encoder and scanner do
# the work. orjson and msgspec were measured too: each imports far slower
# here than json (bench/codec.py).
#
# But `import json` imports `re` (and enum, functools, collections): ~6 ms
# on a quiet machine, a fifth of a small cp, which sends two flat frames and
# reads two. So a flat frame, an object of plain ASCII strings, integers,
# booleans and nulls (every request and reply of a put or a get), is written
# and read by the few lines below, which give exactly json's bytes and
# json's result (tests/test_protocol.py checks both against json, over
# generated frames and garbage); anything else, and anything they are not
# sure of, goes to json, imported then. The writer also takes the `"` and
# `\` of a map's command (`grep "a b"`) and a --timeout's float, so a map's
# client needs no json either; the reader leaves escapes to json.
_codec: list = []


def _json():
    """(encoder, decoder) of the json package, made at the first frame that needs them."""
    if not _codec:
        import json

        def not_json(value):
            raise TypeError(f"{type(value).__name__} cannot go in a frame")

        def no_constant(name: str):
            raise ValueError(f"{name} is not JSON")

        _codec.append(json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"),
                                       default=not_json))
        _codec.append(json.JSONDecoder(parse_constant=no_constant))
    return _codec


def _quoted(text: str) -> str | None:
    """text as json writes it between quotes (ensure_ascii), if it is printable
    ASCII, where only `"` and `\\` are escaped; else None (json's job)."""
    if not (text.isascii() and text.isprintable()):
        return None
    if '"' in text or "\\" in text:
        return text.replace("\\", "\\\\").replace('"', '\\"')
    return text


def _encode_flat(msg: dict) -> str | None:
    """msg as json.dumps(msg, separators=(",", ":")) writes it, if it is flat; else None."""
    parts = []
    for k, v in msg.items():
        k = _quoted(k) if type(k) is str else None
        if k is None:
            return None
        t = type(v)
        if t is str:
            v = _quoted(v)
            if v is None:
                return None
            parts.append(f'"{k}":"{v}"')
        elif t is int:  # int, not bool (a subclass): json writes int's repr
            parts.append(f'"{k}":{v!r}')
        elif t is bool:
            parts.append(f'"{k}":true' if v else f'"{k}":false')
        elif v is None:
            parts.append(f'"{k}":null')
        elif t is float and v - v == 0.0:  # finite (NaN and infinities are json's to refuse)
            parts.append(f'"{k}":{v!r}')  # json writes float's repr
        else:
            return None
    return "{" + ",".join(parts) + "}"


def _decode_flat(text: str) -> dict | None:
    """json.loads(text) if text is a flat object written without whitespace or
    escapes (as _encode_flat and json with these separators write it); else None.
    Never accepts what json refuses."""
    if len(text) < 2 or text[0] != "{" or text[-1] != "}" or "\\" in text:
        return None
    out: dict = {}
    i, end = 1, len(text) - 1
    if i == end:
        return out
    while True:
        if text[i] != '"':
            return None
        j = text.find('"', i + 1)
        if j < 0 or text[j + 1:j + 2] != ":":
            return None
        key = text[i + 1:j]
        if not key.isprintable():  # a control character: json refuses it (strict)
            return None
        i = j + 2
        if text[i:i + 1] == '"':
            j = text.find('"', i + 1)
            if j < 0:
                return None
            value = text[i + 1:j]
            if not value.isprintable():  # a control character: json refuses it (strict)
                return None
            i = j + 1
        else:
            j = i
            while j < end and text[j] not in ",}":
                j += 1
            word = text[i:j]
            if word in _CONSTANTS:
                value = _CONSTANTS[word]
            else:
                digits = word[1:] if word[:1] == "-" else word
                if not (digits.isascii() and digits.isdigit()) or (digits[0] == "0" and len(digits) > 1):
                    return None
                value = int(word)
            i = j
        out[key] = value
        if i == end:
            return out
        if text[i] != ",":
            return None
        i += 1


_CONSTANTS = {"true": True, "false": False, "null": None}


def encode(msg: dict) -> bytes:
    text = _encode_flat(msg)
    if text is None:
        try:
            text = _json()[0].encode(msg)
        except ValueError:  # allow_nan=False
            raise BadRequest("a frame cannot hold NaN or Infinity (not JSON)") from None
    body = text.encode()
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
        text = body.decode()
        msg = _decode_flat(text)
        if msg is None:
            msg = _json()[1].decode(text)
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
