"""Every size, timeout and pool default of s4, in one place, units in the names.

The daemon reads none of its per-run knobs from here directly: `s4d.config`
builds one frozen `DaemonConfig` from these defaults and the command line,
and the daemon's parts take their figures from it. The wire caps (frame,
chunk, key sizes) are the protocol's own and are read here by client and
daemon alike. The client reads two environment overrides here and nowhere
else, so scripts and tests can shorten its waits without new flags on every
subcommand; the daemon never reads them.
"""
import os

PORT_DEFAULT = 8080
DATA_DIR_DEFAULT = "./s4_data"
LOG_LEVEL_DEFAULT = "info"
LOCAL_NODES_DEFAULT = 3  # `s4d local`
LOCAL_START_TIMEOUT_S = 30.0  # a local daemon must listen by then (generous: loaded CI machines)
LOCAL_STOP_TIMEOUT_S = 10.0   # SIGTERMed, it stops within its grace period; then it is killed
LOCAL_POLL_S = 0.2            # `s4d local` looks for dead daemons this often
LOCAL_PORT_MEMORY_S = 600.0   # a port handed out for a local daemon is not handed out again this long
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
CMD_DIR_REUSE_MAX_ENTRIES = 64  # a map command's dir holding more is removed, not emptied for the next
CMD_DIR_EMPTY_THREADS = 4      # threads emptying used command dirs at once, per map (an unlink can
                               # wait for a discard: off the event loop)
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

# Daemon to daemon (map outputs pushed to their node): how long to keep
# retrying a busy peer. The daemon's own figure, never the client's override.
PUSH_BUSY_TIMEOUT_S = 60.0

# Client: how long to keep retrying a busy node, and how long to wait for a
# silent node. S4_BUSY_TIMEOUT_S / S4_IDLE_TIMEOUT_S override them.
CLIENT_BUSY_TIMEOUT_S = float(os.environ.get("S4_BUSY_TIMEOUT_S", 60.0))
CLIENT_IDLE_TIMEOUT_S = float(os.environ.get("S4_IDLE_TIMEOUT_S", 60.0))
# Backoff between retries of a busy node (client and daemon, s4d.retry): the
# n-th wait is drawn between half and all of min(FIRST * 2**n, MAX), so many
# retriers spread out instead of knocking again in lockstep.
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0
CLIENT_PARALLEL_TRANSFERS = 8  # cp -r: transfers in flight at once
# A download's temp file is `.<name>.s4tmp.<pid>.<n>` beside its destination:
# the name is cut to this many bytes so a 255-byte basename still fits.
TEMP_NAME_KEEP_BYTES = 200
SYMLINK_HOPS_MAX = 40  # links followed to resolve a local path (the kernel's MAXSYMLINKS)
# fsspec: one ranged get per block of an open file (sequential reads fetch ahead by this much)
FSSPEC_BLOCK_BYTES = 8 * 1024 * 1024
FSSPEC_PREFETCH_THREADS = 4  # per filesystem: the next block of sequential reads, fetched meanwhile
# Client.get_bytes: a thread keeps its receive buffer (for its next ranged read) up to this size
CLIENT_RECV_BUFFER_KEEP_BYTES = 32 * 1024 * 1024

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


def default_io_jobs() -> int:
    return (os.cpu_count() or 1) * 4


def default_cpu_jobs() -> int:
    return (os.cpu_count() or 1) + 2

# --- S3 in and out (s4d/s3.py) ------------------------------------------------
# Objects over the threshold move as parts of S3_PART_BYTES: ranged GETs in, a
# multipart upload out (S3 wants parts of 5 MiB or more but the last). 16 MiB,
# not the aws CLI's 8: against the local S3 server an export of 16 MiB objects
# ran ~2x faster as one PUT each than as two parts (bench/RESULTS.md). On every
# node, S3_OBJECTS_PER_NODE objects move at once and at most S3_PARTS_PER_NODE
# GETs or PUTs; an export holds what it sends in memory (read once, hashed,
# sent), so a node holds at most S3_PARTS_PER_NODE x 16 MiB of it; an import
# writes each read straight to its file. The two sizes can be set by
# environment (S4_S3_MULTIPART_THRESHOLD_BYTES, S4_S3_PART_BYTES).
S3_MULTIPART_THRESHOLD_BYTES = int(os.environ.get("S4_S3_MULTIPART_THRESHOLD_BYTES", 16 * 1024 * 1024))
S3_PART_BYTES = int(os.environ.get("S4_S3_PART_BYTES", 16 * 1024 * 1024))
S3_OBJECTS_PER_NODE = 8
S3_PARTS_PER_NODE = 8
S3_CONNECTIONS_PER_NODE = 16  # the HTTP pool of a node's S3 client (>= the parts in flight)
S3_READ_BYTES = 1024 * 1024   # one read of a GET's body, written to the file at once
S3_RETRIES = 5                # the S3 client's own retries of throttled or broken requests
