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
