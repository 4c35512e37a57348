"""Helpers for tests that move real frames between two network namespaces made on the spot.

`fixtures.py` has the `veth_pair()` context manager (from `guest.testing.netns`), the
skip rule and ways to run code inside a namespace; `checks.py` holds the checks that must run
in the namespace itself (a process can only open sockets in its own namespace), started as
`python3 -m tests.netns.checks NAME ARGS-JSON`.
"""
