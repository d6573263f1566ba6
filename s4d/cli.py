"""s4d: the s4 storage daemon (one per host).

Usage:
  s4d [options] [--port N] [--log-level LEVEL]
  s4d local [--nodes N] [--dir DIR] [--port N] [--log-level LEVEL]
  s4d -h | --help
  s4d --version

Serves the keys of one node of the cluster named by the conf. The node finds
itself in the conf by its own addresses and --port.

`s4d local` starts a whole cluster of N daemons on 127.0.0.1 for trying s4,
tests and benchmarks: it writes DIR/s4.conf, prints how to point s4ctl at it,
and stops the daemons on Ctrl-C.

Options:
  -c, --conf PATH        cluster conf: one host:port per line. Default: $S4_CONF_PATH,
                         then ~/.s4.conf, then /etc/s4.conf, else 127.0.0.1:8080 alone.
  -p, --port N           port to serve on (default: 8080; local: the first of N ports, default: free ones)
  -d, --data-dir DIR     where keys are stored [default: ./s4_data]
  --max-io-jobs N        transfers served at once (default: cpus*4)
  --max-cpu-jobs N       commands run at once (default: cpus+2)
  --idle-timeout S       cut a transfer or connection after S seconds without progress [default: 30]
  --timeout S            default limit on one map or eval command, in seconds [default: 86400]
  --log-level LEVEL      debug, info, warning or error [default: info]
  --nodes N              local: how many daemons [default: 3]
  --dir DIR              local: where the conf, data dirs and logs go (default: a new temp dir)
  -h, --help             show this help
  --version              show the version
"""
from __future__ import annotations

import logging
import resource
import signal
import sys

from docopt import docopt

from s4d import __version__, limits


def _positive(args: dict, name: str, cast=int, default=None):
    value = args.get(name)
    if value is None:
        return default
    try:
        n = cast(value)
        if n > 0:
            return n
    except ValueError:
        pass
    sys.exit(f"s4d: {name} must be a positive number, got {value!r}")


def main(argv: list[str] | None = None) -> None:
    args = docopt(__doc__, argv=argv, version=f"s4d {__version__}")
    if args["local"]:
        from s4d.local import run_local
        sys.exit(run_local(nodes=_positive(args, "--nodes"), root=args["--dir"],
                           port=_positive(args, "--port"),
                           log_level=args["--log-level"]))
    logging.basicConfig(level=args["--log-level"].upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    port = _positive(args, "--port", default=limits.PORT_DEFAULT)
    from s4d import conf
    try:
        nodes, path = conf.load(args["--conf"])
        me = conf.find_self(nodes, port)
    except conf.ConfError as e:
        sys.exit(f"s4d: {e}")
    _raise_fd_limit()
    import trio
    from s4d.server import Server
    server = Server(nodes, me, args["--data-dir"],
                    max_io_jobs=_positive(args, "--max-io-jobs", default=limits.default_io_jobs()),
                    max_cpu_jobs=_positive(args, "--max-cpu-jobs", default=limits.default_cpu_jobs()),
                    idle_timeout_s=_positive(args, "--idle-timeout", float),
                    cmd_timeout_s=_positive(args, "--timeout", float))
    host = nodes[me][0]
    bind = None if host in ("0.0.0.0", "::") else conf.resolve(host).pop()
    trio.run(_serve, server, bind, port, path)


async def _serve(server, host: str | None, port: int, conf_path: str | None) -> None:
    import trio
    from s4d import sdnotify
    log = logging.getLogger("s4d")
    # the signal receiver exists before READY=1, so an early SIGTERM still stops cleanly
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, host, port)
            log.info("s4d %s serving %s (node %d of %d, conf %s) data in %s", __version__,
                     server.name, server.self_index, len(server.nodes), conf_path or "default",
                     server.storage.root)
            sdnotify.notify("READY=1")
            async for signum in signals:
                log.info("%s: stopping (in-flight work gets %gs)", signal.Signals(signum).name,
                         limits.STOP_GRACE_S)
                sdnotify.notify("STOPPING=1")
                server.stop()
                break


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    main()
