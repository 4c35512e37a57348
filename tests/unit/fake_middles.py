"""A fake middle node for the forwarding modes' unit tests: its counters move by fixed steps
between samples, and a program started on it either ends with a given report on its stdout
or fails to start with a given message on its stderr."""

from __future__ import annotations

from host.ssh import CommandResult

SNMP = "Ip: Forwarding DefaultTTL InReceives ForwDatagrams OutRequests\nIp: 1 64 100 {fwd} 80\n"


def sample_text(busy: int, idle: int, fwd: int) -> str:
    # user nice system idle iowait irq softirq steal guest guest_nice
    return f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n" + SNMP.format(fwd=fwd)


class FakeRunning:
    """A program started on a FakeMiddle: ready (by its stdout line, or listening) unless the
    middle makes it fail, then its report once stopped."""

    def __init__(self, guest: FakeMiddle, command: str) -> None:
        self.guest, self.command = guest, command
        self.chan = self

    def wait_for_stdout(self, text: str, timeout: float) -> bool:
        return self.guest.fails is None

    def exit_status_ready(self) -> bool:
        return self.guest.fails is not None

    def wait(self, timeout: float) -> CommandResult:
        if self.guest.fails is not None:
            return CommandResult(self.command, 1, "", self.guest.fails)
        return CommandResult(self.command, 0, self.guest.report, "")


class FakeMiddle:
    """A middle node: `report` is what its programs print when stopped; `fails`, if given,
    what one prints on stderr when it cannot start."""

    def __init__(self, name: str, report: str, fails: str | None = None) -> None:
        self.name, self.report, self.fails = name, report, fails
        self.commands: list[str] = []
        self.started: list[str] = []
        self.samples = 0

    def run(self, command: str, timeout: float = 120.0) -> CommandResult:
        self.commands.append(command)
        if command.startswith("head -n1 /proc/stat"):
            n = self.samples
            self.samples += 1
            return CommandResult(command, 0, sample_text(100 + 50 * n, 100 + 50 * n, 7 * n), "")
        if command.startswith("for i in"):  # wait_listening
            return CommandResult(command, 1 if self.fails is not None else 0, "", "")
        return CommandResult(command, 0, "", "")

    def start(self, command: str) -> FakeRunning:
        self.started.append(command)
        return FakeRunning(self, command)
