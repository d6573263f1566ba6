"""Every size, timeout and pool default of s4, in one place, units in the names.

The daemon's per-run knobs (idle timeout, job slots, command timeout) have
command-line flags; these constants are their defaults. The client reads two
environment overrides here and nowhere else, so scripts and tests can shorten
its waits without new flags on every subcommand.
"""
import os

PORT_DEFAULT = 8080
DEFAULT_NODE = ("127.0.0.1", PORT_DEFAULT)  # the cluster when no conf exists

# --- wire -------------------------------------------------------------------
# A frame is metadata only (requests, replies, list pages); data never travels
# in frames. 4 MiB leaves room for a page of LIST_PAGE_ENTRIES long key names.
FRAME_MAX_BYTES = 4 * 1024 * 1024
LIST_PAGE_ENTRIES = 10_000
# One chunk of a data stream; bounded so a forged header cannot ask the daemon
# to wait for a petabyte. A whole file up to this size travels as one chunk.
CHUNK_MAX_BYTES = 1 << 42  # 4 TiB
KEY_MAX_BYTES = 1024
KEY_COMPONENT_MAX_BYTES = 255
CMD_MAX_BYTES = 256 * 1024

# --- bulk transfer ----------------------------------------------------------
PIPE_BYTES = 1024 * 1024          # F_SETPIPE_SZ for splice pipes
SPLICE_BYTES = 1024 * 1024        # one splice(2) call
SENDFILE_BYTES = 8 * 1024 * 1024  # one sendfile(2) call
CHECKPOINT_EVERY_BYTES = 16 * 1024 * 1024  # yield to trio this often in a long transfer
BUFFER_BYTES = 1024 * 1024        # recv_into / read buffers (client, hashing)
HASH_INLINE_MAX_BYTES = 1024 * 1024  # hash smaller files on the event loop, larger in a thread
HASH_WINDOW_BYTES = 4 * 1024 * 1024  # mmap'd at once while hashing: bounds resident memory

# --- time -------------------------------------------------------------------
IDLE_TIMEOUT_S = 30.0         # a transfer or connection with no progress this long is cut
BUSY_WAIT_S = 2.0             # a request waits this long for a job slot, then gets "busy"
CMD_TIMEOUT_S = 24 * 3600.0   # default limit on one map/eval command (kills its process group)
SWEEP_INTERVAL_S = 60.0       # how often orphaned temp files are removed
STOP_GRACE_S = 5.0            # on SIGTERM, in-flight work gets this long before it is cancelled
ERROR_DRAIN_S = 1.0           # after an error frame, read (and drop) what the peer still sends, so
                              # closing with unread data does not reset the error away
PROGRESS_INTERVAL_S = 0.5     # map progress frames (also the client's proof of life)
CONNECT_TIMEOUT_S = 5.0
ACCEPT_BACKOFF_S = 0.1        # accept() failed (out of fds): wait this long, then accept again
HEALTH_TIMEOUT_S = 2.0

# Client: how long to keep retrying a busy node, and how long to wait for a
# silent node. S4_BUSY_TIMEOUT_S / S4_IDLE_TIMEOUT_S override them.
CLIENT_BUSY_TIMEOUT_S = float(os.environ.get("S4_BUSY_TIMEOUT_S", 60.0))
CLIENT_IDLE_TIMEOUT_S = float(os.environ.get("S4_IDLE_TIMEOUT_S", 60.0))
CLIENT_BACKOFF_FIRST_S = 0.05
CLIENT_BACKOFF_MAX_S = 1.0
CLIENT_PARALLEL_TRANSFERS = 8  # cp -r: transfers in flight at once

# --- rm -r -------------------------------------------------------------------
# Each unlink of a file whose blocks are on disk can wait for a discard (a
# `discard`-mounted filesystem); unlinks from several threads overlap them.
RM_THREADS = 16               # threads unlinking at once, per rm
RM_BATCH_KEYS = 256           # keys of one directory per thread call (a cancel waits for one)

# --- controller -------------------------------------------------------------
STDERR_TAIL_BYTES = 2048      # what a failed command's error keeps of its stderr
PUSH_PARALLEL = 4             # map outputs sent to other nodes at once, per map

# --- push: map outputs moved node to node (s4d/push.py) ------------------------
PUSH_STREAMS_PER_PEER = 1     # push streams open to one peer at once; each is one connection
PUSH_LINGER_S = 0.2           # a stream with nothing queued or awaited waits this long for more
                              # entries before it ends (a map's outputs come a command apart)
PUSH_POOL_PER_PEER = 2        # idle connections kept per peer between streams
PUSH_POOL_IDLE_S = 10.0       # an idle pooled connection is closed after this long (and before
                              # half the peer's idle timeout, which would close it from its end)
PUSH_INLINE_MAX_BYTES = 64 * 1024  # entries this small go through Python, batched into few sends;
                                   # bigger ones by sendfile out and splice in
PUSH_BATCH_BYTES = 256 * 1024      # one send of batched entries, and one recv of the receiver
PUSH_BUSY_TIMEOUT_S = 60.0    # a busy peer is retried this long (the daemon's own limit: the
                              # client's S4_BUSY_TIMEOUT_S is not read here)
PUSH_BACKOFF_FIRST_S = 0.05   # first wait before retrying a busy peer; doubles, jittered
PUSH_BACKOFF_MAX_S = 1.0


def default_io_jobs() -> int:
    return (os.cpu_count() or 1) * 4


def default_cpu_jobs() -> int:
    return (os.cpu_count() or 1) + 2
