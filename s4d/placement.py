"""Which node holds a key: pure arithmetic on the key's basename.

A basename that starts with digits (`000`, `000_x`, `00042_y`) goes to node
`int(digits) % N` in conf order; any other basename to `xxh3_64(basename) % N`,
the same in every process, machine and Python version (never `hash()`).
So 1:1 and n:1 map outputs, which keep their input's basename or numeric
prefix, land where their inputs are; only map-to-n moves data.
"""
import xxhash


def numeric_prefix(name: str) -> str:
    """The leading digits of a basename, or '' if it does not start with one."""
    end = 0
    while end < len(name) and "0" <= name[end] <= "9":
        end += 1
    return name[:end]


def node_index(path: str, num_nodes: int) -> int:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    digits = numeric_prefix(name)
    if digits:
        return int(digits) % num_nodes
    return xxhash.xxh3_64_intdigest(name.encode()) % num_nodes
