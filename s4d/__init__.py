"""s4d: the s4 storage daemon and the pieces it shares with the s4ctl client.

Importing this package is free: it pulls in nothing. The client imports
`protocol`, `errors`, `limits`, `keys`, `placement`, `checksum` and `conf`
without trio; those modules also do without `from __future__ import
annotations` (one more module to load, ~0.3 ms of a small cp) and import
what only a big transfer needs (mmap) where it is used.
"""
__version__ = "0.1.0"
