"""The sans-IO protocol: frames and chunks as bytes, no sockets."""
import json
import struct

import pytest
from hypothesis import given, strategies as st

from s4d import limits, protocol
from s4d.errors import BadRequest, ProtocolError


def test_a_frame_round_trips_when_fed_one_byte_at_a_time():
    msg = {"op": "put", "key": "bucket/dir/k", "n": 3}
    data = protocol.encode(msg) * 2
    decoder = protocol.FrameDecoder()
    frames = []
    for i in range(len(data)):
        decoder.feed(data[i:i + 1])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    assert frames == [msg, msg]
    assert decoder.pending == 0


def test_bytes_wanted_never_reads_past_a_frame():
    data = protocol.encode({"op": "health"}) + b"RAWDATA"
    decoder = protocol.FrameDecoder()
    offset = 0
    while (frame := decoder.next_frame()) is None:
        n = decoder.bytes_wanted()
        decoder.feed(data[offset:offset + n])
        offset += n
    assert frame == {"op": "health"}
    assert data[offset:] == b"RAWDATA"


def test_an_oversize_length_prefix_is_refused_before_the_body_arrives():
    decoder = protocol.FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack(">I", 0xFFFFFFFF))


@pytest.mark.parametrize("body", [b"\xff\xfe", b"not json", b"[1, 2]", b'"str"'])
def test_garbage_bodies_are_protocol_errors(body):
    decoder = protocol.FrameDecoder()
    decoder.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError):
        decoder.next_frame()


@given(st.binary(max_size=200))
def test_random_bytes_only_ever_give_frames_or_protocol_errors(data):
    decoder = protocol.FrameDecoder()
    try:
        decoder.feed(data)
        while decoder.next_frame() is not None:
            pass
    except ProtocolError:
        pass


@given(st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.booleans(), st.integers(),
                                                       st.text(max_size=20)), max_size=6))
def test_check_request_accepts_or_raises_bad_request(msg):
    try:
        op = protocol.check_request(msg)
    except BadRequest:
        return
    assert op in protocol.OPS


def test_check_request_types_fields():
    assert protocol.check_request({"op": "ls", "prefix": "b/", "recursive": False}) == "ls"
    with pytest.raises(BadRequest):
        protocol.check_request({"op": "ls", "prefix": "b/", "recursive": 1})
    with pytest.raises(BadRequest):
        protocol.check_request({"op": "get", "key": 7})
    with pytest.raises(BadRequest):
        protocol.check_request({"op": "nope"})
    with pytest.raises(BadRequest):
        protocol.check_request({"op": "eval", "key": "b/k", "cmd": "x", "timeout": -1})


def test_chunk_headers_round_trip_and_are_capped():
    assert protocol.decode_chunk_header(protocol.encode_chunk_header(12345)) == 12345
    with pytest.raises(ProtocolError):
        protocol.decode_chunk_header(struct.pack(">Q", limits.CHUNK_MAX_BYTES + 1))


def test_encode_refuses_a_frame_over_the_cap():
    with pytest.raises(BadRequest):
        protocol.encode({"x": "a" * (limits.FRAME_MAX_BYTES + 1)})
    assert json.loads(protocol.encode({"a": 1})[4:]) == {"a": 1}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_frame_never_carries_nan_or_infinity_either_way(value):
    with pytest.raises(BadRequest):
        protocol.encode({"timeout": value})
    body = json.dumps({"timeout": value}).encode()  # what a lax peer would send
    with pytest.raises(ProtocolError):
        protocol.decode_frame_body(body)


def test_the_codec_calls_no_private_module_of_the_standard_library():
    source = open(protocol.__file__).read()
    assert "import _json" not in source and "_json." not in source


# --- the flat-frame path: exactly json's bytes and json's results --------------------------
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_flat_values = st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.text(max_size=12)
_json_values = st.recursive(_flat_values | st.floats(allow_nan=False, allow_infinity=False),
                            lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
_PIECES = ['{', '}', '"', ':', ',', '0', '1', '-', 'true', 'null', 'false', 'a', ' ', '\x01',
           'é', '\\', '"a"', '{"', '":', '01', '1.5', '[]', '\u2028']


@given(st.dictionaries(st.text(max_size=8) | st.sampled_from(['"', '\\', 'a"b\\c', 'cmd']),
                       _flat_values | st.floats() | st.sampled_from(['grep "a b"', 'sed s/\\//x/', '\\"']),
                       max_size=6))
def test_flat_frames_are_written_byte_for_byte_as_json_writes_them(msg):
    # NaN and infinities are refused: test_a_frame_never_carries_nan_or_infinity_either_way
    assume(not any(v != v or v in (float("inf"), float("-inf")) for v in msg.values() if type(v) is float))
    assert protocol.encode(msg)[4:] == json.dumps(msg, separators=(",", ":")).encode()
    assert protocol.decode_frame_body(protocol.encode(msg)[4:]) == msg


@given(st.dictionaries(st.text(max_size=8), _json_values, max_size=5))
def test_any_json_object_round_trips_and_reads_as_json_reads_it(msg):
    assert protocol.decode_frame_body(protocol.encode(msg)[4:]) == msg
    for separators in ((",", ":"), (", ", ": ")):
        assert protocol.decode_frame_body(json.dumps(msg, separators=separators).encode()) == msg


@settings(max_examples=500)
@given(st.lists(st.sampled_from(_PIECES), max_size=14).map("".join) | st.text(max_size=30))
def test_the_flat_reader_accepts_nothing_json_refuses_and_reads_what_json_reads(text):
    fast = protocol._decode_flat(text)
    if fast is None:
        return
    assert repr(json.loads(text)) == repr(fast)  # repr: True == 1, but not as a frame field
