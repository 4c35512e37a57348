"""Prepare a guest's experiment NICs at a lab's bring-up: `python3 -m guest.tools.nic IFACE...`.

Turns receive checksumming on (`guest.stack.device.setup.receive_checksums_on`) and prints the
interfaces it switched as one JSON line; exits 1 with the reason if a link did not come back.
"""

from __future__ import annotations

import argparse
import json
import sys

from guest.stack.device.setup import receive_checksums_on


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m guest.tools.nic", description=__doc__)
    ap.add_argument("ifaces", nargs="+", help="experiment NICs, e.g. eth1 eth2")
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds for a link to return")
    args = ap.parse_args(argv)
    try:
        switched = receive_checksums_on(args.ifaces, args.timeout)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps({"rx_checksums_switched_on": switched}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
