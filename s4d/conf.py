"""The cluster conf: where it is, what it says, and which entry is this node.

The conf is one `host:port` per line (blank lines and `#` comments allowed).
It is looked up as `--conf PATH`, then `$S4_CONF_PATH`, then `~/.s4.conf`,
then `/etc/s4.conf`; with none of them the cluster is one local node,
127.0.0.1:8080. Node order is conf order: placement depends on it, so every
host and client must use the same file.
"""
import os

from s4d import limits

Node = tuple[str, int]


class ConfError(Exception):
    pass


def find(explicit: str | None = None) -> str | None:
    """The conf path in use, or None for the single-node default."""
    for path, must_exist in ((explicit, True), (os.environ.get("S4_CONF_PATH"), True),
                             (os.path.expanduser("~/.s4.conf"), False), ("/etc/s4.conf", False)):
        if path:
            if os.path.isfile(path):
                return path
            if must_exist:
                raise ConfError(f"conf not found: {path}")
    return None


def parse(text: str, source: str = "conf") -> list[Node]:
    nodes: list[Node] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        host, sep, port = line.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfError(f"{source}:{lineno}: expected host:port, got {line!r}")
        nodes.append((host, int(port)))
    if not nodes:
        raise ConfError(f"{source}: no nodes listed")
    if len(set(nodes)) != len(nodes):
        raise ConfError(f"{source}: a node is listed twice")
    return nodes


def load(explicit: str | None = None) -> tuple[list[Node], str | None]:
    path = find(explicit)
    if path is None:
        return [limits.DEFAULT_NODE], None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ConfError(f"{path}: not a conf (not UTF-8 text; expected one host:port per line)") from None
    except OSError as e:
        raise ConfError(f"cannot read conf {path}: {e.strerror or e}") from None
    return parse(text, path), path


def own_addresses() -> set[str]:
    import socket  # daemon only, like psutil: the client never needs to know who it is

    import psutil
    addrs = {"0.0.0.0", "::"}
    for snics in psutil.net_if_addrs().values():
        for snic in snics:
            if snic.family in (socket.AF_INET, socket.AF_INET6):
                addrs.add(snic.address.split("%", 1)[0])
    return addrs


def resolve(host: str) -> list[str]:
    """The host's TCP addresses in getaddrinfo's order (the system's preference), once each."""
    import socket
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return []
    return list(dict.fromkeys(info[4][0] for info in infos))


def find_self(nodes: list[Node], port: int) -> tuple[int, str | None]:
    """(index of this host's entry, address to bind): the entry's port is `port`
    and one of its addresses is ours. The bind address is the first of the
    entry's addresses (in the resolver's order) that is ours: the same one on
    every start, the one peers reach when they resolve the conf's name. A
    wildcard entry (0.0.0.0, ::) binds every address (None)."""
    mine = own_addresses()
    matches = []
    for i, (host, p) in enumerate(nodes):
        if p != port:
            continue
        ours = [a for a in resolve(host) if a in mine]
        if ours:
            matches.append((i, None if host in ("0.0.0.0", "::") else ours[0]))
    if len(matches) != 1:
        listed = ", ".join(f"{h}:{p}" for h, p in nodes)
        what = "none" if not matches else "more than one"
        raise ConfError(f"{what} of the conf's nodes ({listed}) is this host on port {port}")
    return matches[0]
