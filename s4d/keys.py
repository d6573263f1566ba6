"""Key and prefix rules, shared by client and daemon.

A key is `s4://bucket/path/to/name`; on the wire it travels without the
scheme (`bucket/path/to/name`). The daemon checks every key and prefix it is
sent with these same functions, so nothing a client sends can name a path
outside the data directory: no empty, `.` or `..` components, no NUL, no
whitespace or control characters, no bucket starting with `_` (the daemon's
own `_tmp` lives there), bounded lengths.
"""
from s4d import limits
from s4d.errors import BadKey

SCHEME = "s4://"


def strip_scheme(url: str) -> str:
    """`s4://b/k` -> `b/k`, collapsing repeated slashes (`s4://b/dir//k`)."""
    if not url.startswith(SCHEME):
        raise BadKey(f"not an s4:// url: {url}")
    path = url[len(SCHEME):]
    while "//" in path:
        path = path.replace("//", "/")
    return path


def url(path: str) -> str:
    return SCHEME + path


def _check_text(path: str) -> None:
    if len(path.encode("utf-8", "surrogatepass")) > limits.KEY_MAX_BYTES:
        raise BadKey(f"key longer than {limits.KEY_MAX_BYTES} bytes: {url(path)[:80]}...")
    for ch in path:
        if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or "\ud800" <= ch <= "\udfff":
            raise BadKey(f"keys may not contain spaces or control characters: {url(path)!r}")


def _check_components(path: str, parts: list[str]) -> None:
    if parts[0].startswith("_"):
        raise BadKey(f"buckets may not start with '_': {url(path)}")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadKey(f"empty, '.' or '..' path component: {url(path)}")
        if len(part.encode()) > limits.KEY_COMPONENT_MAX_BYTES:
            raise BadKey(f"path component longer than {limits.KEY_COMPONENT_MAX_BYTES} bytes: {url(path)[:80]}...")


def check_key(path: str) -> list[str]:
    """Validate a wire key `bucket/a/b`; return its components."""
    if not isinstance(path, str) or not path:
        raise BadKey("empty key")
    _check_text(path)
    parts = path.split("/")
    if len(parts) < 2:
        raise BadKey(f"key needs a bucket and a name: {url(path)}")
    _check_components(path, parts)
    return parts


def check_prefix(path: str) -> list[str]:
    """Validate a wire prefix: `` (everything), `buck`, `bucket/`, `bucket/di`.

    Every component but the last must be whole; the last may be empty (a
    trailing slash) or partial. Returns the components."""
    if not isinstance(path, str):
        raise BadKey("prefix must be a string")
    if path == "":
        return []
    _check_text(path)
    parts = path.split("/")
    whole, last = parts[:-1], parts[-1]
    if whole:
        _check_components(path, whole)
    elif last.startswith("_"):
        raise BadKey(f"buckets may not start with '_': {url(path)}")
    if last in (".", ".."):
        raise BadKey(f"'.' or '..' path component: {url(path)}")
    if len(last.encode()) > limits.KEY_COMPONENT_MAX_BYTES:
        raise BadKey(f"path component longer than {limits.KEY_COMPONENT_MAX_BYTES} bytes")
    return parts


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
