"""``python3 -m guest.traffic``: see :mod:`guest.traffic`."""

from .cli import run

run()
