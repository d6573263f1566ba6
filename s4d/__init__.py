"""s4d: the s4 storage daemon and the pieces it shares with the s4ctl client.

Importing this package is free: it pulls in nothing. The client imports
`protocol`, `errors`, `limits`, `keys`, `placement` and `conf` without trio.
"""
__version__ = "0.1.0"
