"""s4ctl: the s4 command-line client (blocking sockets, no trio)."""
