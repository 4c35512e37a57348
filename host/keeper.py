"""The keeper: owns a lab that outlives the command that started it (`invoke lab.up`).

A lab's domains live as long as the libvirt connection that created them (AUTODESTROY), so a lab
meant to stay up needs a process that stays too. `lab.up` starts this keeper in its own session
and relays its progress; the keeper prints `READY <state path>` when every node runs commands,
then waits for SIGTERM (`lab.down`) and tears down. If the keeper is killed outright, libvirt
destroys the domains and the guardian removes the files.
Run as `python -m host.keeper CONFIG [--name NAME] [--accel kvm|tcg]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time

from host.accel import ACCELS, accel_for
from host.config import load_lab
from host.lab import Lab, terminate_on_sigterm


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m host.keeper")
    ap.add_argument("config")
    ap.add_argument("--name")
    ap.add_argument("--accel", choices=ACCELS)
    args = ap.parse_args(argv)
    terminate_on_sigterm()

    def say(msg: str) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            print(msg, flush=True)

    try:
        config = load_lab(args.config)
        accel = accel_for(config.image, args.accel, progress=say)
        with Lab(config, name=args.name, accel=accel, progress=say) as lab:
            state = lab.up()
            say(f"READY {state.run_dir}/state.json")
            # Nobody reads our output from here on: point it at /dev/null, not a closed pipe.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            while True:
                signal.pause() if hasattr(signal, "pause") else time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except Exception as e:
        say(f"FAILED {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
