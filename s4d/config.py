"""The daemon's settings: one frozen object, built once by the command line.

`DaemonConfig` holds every limit, timeout and default the daemon uses at
run time, with its unit in its name. Its defaults come from `s4d.limits`
(where every figure of s4 is named); `s4d.cli` builds one from the flags
and hands it to `Server`, which passes it on to `Storage` and `Controller`.
Nothing in the daemon reads a flag, an environment variable or a default
of its own after that: what a daemon runs with is this object (its log
line at start says so), and a test builds one with the figures it wants.
The help text of `s4d` prints these defaults; it does not define them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from s4d import limits


@dataclass(frozen=True)
class DaemonConfig:
    # --- where -----------------------------------------------------------------
    port: int = limits.PORT_DEFAULT
    data_dir: str = limits.DATA_DIR_DEFAULT
    log_level: str = limits.LOG_LEVEL_DEFAULT
    # --- pools -------------------------------------------------------------------
    max_io_jobs: int = field(default_factory=limits.default_io_jobs)
    max_cpu_jobs: int = field(default_factory=limits.default_cpu_jobs)
    push_parallel: int = limits.PUSH_PARALLEL
    rm_threads: int = limits.RM_THREADS
    rm_batch_keys: int = limits.RM_BATCH_KEYS
    s3_objects_per_node: int = limits.S3_OBJECTS_PER_NODE
    s3_parts_per_node: int = limits.S3_PARTS_PER_NODE
    s3_connections_per_node: int = limits.S3_CONNECTIONS_PER_NODE
    s3_retries: int = limits.S3_RETRIES
    # --- time --------------------------------------------------------------------
    idle_timeout_s: float = limits.IDLE_TIMEOUT_S
    cmd_timeout_s: float = limits.CMD_TIMEOUT_S
    busy_wait_s: float = limits.BUSY_WAIT_S
    sweep_interval_s: float = limits.SWEEP_INTERVAL_S
    stop_grace_s: float = limits.STOP_GRACE_S
    error_drain_s: float = limits.ERROR_DRAIN_S
    progress_interval_s: float = limits.PROGRESS_INTERVAL_S
    connect_timeout_s: float = limits.CONNECT_TIMEOUT_S
    accept_backoff_s: float = limits.ACCEPT_BACKOFF_S
    push_busy_timeout_s: float = limits.PUSH_BUSY_TIMEOUT_S
    backoff_first_s: float = limits.BACKOFF_FIRST_S
    backoff_max_s: float = limits.BACKOFF_MAX_S
    # --- sizes -------------------------------------------------------------------
    list_page_entries: int = limits.LIST_PAGE_ENTRIES
    stderr_tail_bytes: int = limits.STDERR_TAIL_BYTES

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if isinstance(value, (int, float)) and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
