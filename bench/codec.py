"""The frame codec: what the public json costs against the private _json calls it replaced.

s4d/protocol.py writes and reads flat frames (every request and reply of a
put or get) by a few lines of its own that give json's exact bytes, and
every other frame with the standard json (strict: no NaN), imported only
then, so a small cp never imports json (or `re`). Until the review fixes it called
CPython's private `_json.make_encoder` / `make_scanner` directly, to spare a
small `cp` the import of `json` (which imports `re`). This prints, in one
window:

- import: wall ms of `python -c "import X"` for json, _json, and orjson /
  msgspec when installed (not dependencies of s4; `pip install` them to see),
  interleaved, medians;
- per frame: us to encode + decode a put request and its reply (flat frames:
  s4d.protocol's own few lines) and a 10,000 entry `ls` page (json), through
  s4d.protocol and through the old private calls.

Usage: python bench/codec.py [--reps N]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time

from s4d import protocol


def _private_codec():
    """The old codec, as s4d/protocol.py had it (for comparison only)."""
    import _json

    def not_json(value):
        raise TypeError(type(value).__name__)

    class Settings:
        strict = True
        object_hook = object_pairs_hook = None
        parse_float, parse_int = float, int
        parse_constant = {"NaN": float("nan")}.__getitem__

    dumps = _json.make_encoder(None, not_json, _json.encode_basestring_ascii, None, ":", ",",
                               False, False, True)
    scan = _json.make_scanner(Settings)
    return (lambda msg: "".join(dumps(msg, 0)).encode()), (lambda body: scan(body.decode(), 0)[0])


def imports(reps: int) -> None:
    mods = ["pass", "import _json", "import json"]
    mods += [f"import {m}" for m in ("orjson", "msgspec.json")
             if importlib.util.find_spec(m.split(".")[0])]
    t: dict[str, list[float]] = {m: [] for m in mods}
    for i in range(reps):
        for m in (mods if i % 2 == 0 else mods[::-1]):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", m], check=True)
            t[m].append(time.perf_counter() - start)
    base = statistics.median(t["pass"])
    for m in mods:
        ms = statistics.median(t[m]) * 1000
        print(f"import  {m:22} {ms:7.1f} ms  (+{ms - base * 1000:.1f} over a bare interpreter)")


def per_frame(reps: int) -> None:
    enc_old, dec_old = _private_codec()
    frames = {
        "put request + reply": [{"op": "put", "key": "bucket/dir/000_part.csv"},
                                {"ok": True, "size": 1024, "xxh3": "0123456789abcdef"}],
        "ls page, 10k entries": [{"entries": [[f"bucket/dir/key{i:06d}", 1024, 1764633600]
                                              for i in range(10_000)]}],
    }
    for name, msgs in frames.items():
        n = max(1, reps * 200 // (len(str(msgs)) // 100 + 1))
        for label, enc, dec in (("s4d.protocol (now)", lambda m: protocol.encode(m)[4:],
                                 protocol.decode_frame_body),
                                ("private _json (before)", enc_old, dec_old)):
            start = time.perf_counter()
            for _ in range(n):
                for m in msgs:
                    dec(enc(m))
            us = (time.perf_counter() - start) / n * 1e6
            print(f"frame   {name:22} {label:24} {us:10.1f} us encode+decode")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=40)
    a = ap.parse_args()
    imports(a.reps)
    per_frame(a.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
