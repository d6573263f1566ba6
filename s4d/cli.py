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
and stops the daemons on Ctrl-C. If one daemon dies, it says which (and its
log) and the others keep serving; it then exits 1 when stopped, or at once
when no daemon is left. One `s4d local` per DIR.

Options:
  -c, --conf PATH        cluster conf: one host:port per line. Default: $S4_CONF_PATH,
                         then ~/.s4.conf, then /etc/s4.conf, else 127.0.0.1:8080 alone.
  -p, --port N           port to serve on (default: {port}; local: the first of N ports,
                         default: free ones)
  -d, --data-dir DIR     where keys are stored (default: {data_dir}). One daemon per
                         data dir: a second one exits at once, naming the first's pid.
  --max-io-jobs N        transfers served at once (default: cpus*4, here {max_io_jobs})
  --max-cpu-jobs N       commands run at once (default: cpus+2, here {max_cpu_jobs})
  --idle-timeout S       cut a transfer or connection after S seconds without progress
                         (default: {idle_timeout_s:g})
  --timeout S            default limit on one map or eval command, in seconds
                         (default: {cmd_timeout_s:g})
  --log-level LEVEL      debug, info, warning or error (default: {log_level})
  --nodes N              local: how many daemons (default: {nodes})
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


def usage() -> str:
    """The help text, with the defaults DaemonConfig holds (it defines them; this shows them)."""
    from s4d.config import DaemonConfig
    return __doc__.format(nodes=limits.LOCAL_NODES_DEFAULT, **DaemonConfig().__dict__)


def _positive(args: dict, name: str, cast=int):
    value = args.get(name)
    if value is None:
        return None
    try:
        n = cast(value)
        if n > 0:
            return n
    except ValueError:
        pass
    sys.exit(f"s4d: {name} must be a positive number, got {value!r}")


def config_from(args: dict):
    """The DaemonConfig for these docopt args: a flag given overrides its default."""
    from s4d.config import DaemonConfig
    given = {"port": _positive(args, "--port"), "data_dir": args["--data-dir"],
             "log_level": args["--log-level"],
             "max_io_jobs": _positive(args, "--max-io-jobs"),
             "max_cpu_jobs": _positive(args, "--max-cpu-jobs"),
             "idle_timeout_s": _positive(args, "--idle-timeout", float),
             "cmd_timeout_s": _positive(args, "--timeout", float)}
    return DaemonConfig(**{k: v for k, v in given.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    args = docopt(usage(), argv=argv, version=f"s4d {__version__}")
    log_level = (args["--log-level"] or limits.LOG_LEVEL_DEFAULT).lower()
    if log_level not in ("debug", "info", "warning", "error"):
        sys.exit(f"s4d: --log-level must be debug, info, warning or error, got {log_level!r}")
    if args["local"]:
        from s4d.local import run_local
        sys.exit(run_local(nodes=_positive(args, "--nodes") or limits.LOCAL_NODES_DEFAULT,
                           root=args["--dir"], port=_positive(args, "--port"), log_level=log_level))
    config = config_from(args)
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    from s4d import conf
    try:
        nodes, path = conf.load(args["--conf"])
        me, bind = conf.find_self(nodes, config.port)
    except conf.ConfError as e:
        sys.exit(f"s4d: {e}")
    _raise_fd_limit()
    import trio
    from s4d.server import Server
    server = Server(nodes, me, config)
    trio.run(_serve, server, bind, config.port, path)


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
                         server.config.stop_grace_s)
                sdnotify.notify("STOPPING=1")
                server.stop()
                break


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    main()
