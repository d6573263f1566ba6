"""The systemd readiness protocol (`sd_notify`) in a few lines, no dependencies.

Under a `Type=notify` unit systemd puts the path of a datagram socket in
`$NOTIFY_SOCKET`; the service sends newline-separated `KEY=VALUE` states to it:
`READY=1` once it serves (the port listens), `STOPPING=1` when it begins to shut
down, `STATUS=...` for `systemctl status`. A path starting with `@` names a
Linux abstract socket. Outside systemd the variable is unset and `notify` does
nothing, so the daemon calls it unconditionally.

This module owns only the sending. It does not import trio: one `sendto` on a
local datagram socket that systemd drains waits for no reply, so the server may
call it straight from the event loop. `NOTIFY_SOCKET` is left in the environment (a later
`STOPPING=1` needs it); the commands the daemon runs inherit it, which is
harmless because the unit's default `NotifyAccess=main` makes systemd ignore
messages from any process but the daemon itself.
"""
from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to $NOTIFY_SOCKET; True if it was sent.

    False when the variable is unset or names no usable AF_UNIX socket, or the
    send fails: not being supervised is not an error, and a failed notification
    must not take the daemon down (systemd reports the missing READY itself).
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace: leading NUL, no file
    elif not address.startswith("/"):
        return False  # unset, empty, or a transport we do not speak (vsock:)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True
