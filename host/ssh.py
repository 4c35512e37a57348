"""SSH to the guests with paramiko: per-lab keys, readiness waits, commands, and deployment.

The lab key is an ed25519 key generated per run; its public half reaches the guest on the kernel
command line, so the image never holds a credential. Host keys are not verified: every guest is
reached only through a port forwarded on 127.0.0.1 to a VM this process just started.
"""

from __future__ import annotations

import io
import socket
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from host.paths import PROJECT_ROOT

GUEST_DIR = "/opt/stackbed"


def traffic_command(role: str, args: str) -> str:
    """The shell command that runs the traffic tool as deployed in a guest."""
    return f"cd {GUEST_DIR} && exec python3 -m guest.traffic {role} {args}"


class GuestError(RuntimeError):
    pass


class GuestLost(GuestError):
    """The guest's SSH session broke or could not be opened: the guest may be gone (a
    caller asks libvirt what became of its domain), not a command that failed."""


def generate_key(path: Path) -> str:
    """Write a new ed25519 private key (OpenSSH format, 0600) and return the public key's base64."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return pub.decode().split()[1]


@dataclass
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str

    def check(self) -> CommandResult:
        if self.exit_status != 0:
            raise GuestError(
                f"`{self.command}` exited {self.exit_status}: {self.stderr.strip()[-800:]}"
            )
        return self


class Guest:
    """One guest's SSH session (a single transport, multiplexed channels)."""

    def __init__(self, name: str, port: int, key_path: Path, host: str = "127.0.0.1"):
        self.name = name
        self.host = host
        self.port = port
        self.key_path = key_path
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def _banner_ready(self, timeout: float) -> bool:
        """QEMU accepts on the forwarded port before the guest listens: wait for sshd's banner."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as s:
                s.settimeout(timeout)
                return s.recv(8).startswith(b"SSH-")
        except OSError:
            return False

    def wait_ready(
        self,
        deadline: float,
        console_log: Path | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Block until a command runs in the guest or `deadline` (monotonic) passes; stop at
        once when `cancel` is set (the lab is being torn down: nobody waits for this guest)."""
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise GuestError(f"guest {self.name}: bring-up cancelled")
            if self._banner_ready(timeout=2.0):
                try:
                    # Each attempt is short, so a cancel or the deadline is noticed soon.
                    attempt = min(10.0, max(1.0, deadline - time.monotonic()))
                    self.connect(timeout=attempt)
                    self.run("true", timeout=attempt).check()
                    return
                except (OSError, paramiko.SSHException, GuestError) as e:
                    last_err = e
                    self.close()
            time.sleep(0.2)
        hint = ""
        if console_log is not None:
            tail = (
                console_log.read_text(errors="replace").splitlines()[-15:]
                if (console_log.exists())
                else ["(no console output yet)"]
            )
            hint = f"\nconsole log {console_log}, last lines:\n  " + "\n  ".join(tail)
        raise GuestError(
            f"guest {self.name} not reachable by SSH on 127.0.0.1:{self.port} in time"
            f"{f' (last error: {last_err})' if last_err else ''}{hint}"
        )

    def connect(self, timeout: float = 10.0) -> paramiko.SSHClient:
        with self._lock:
            if self._client is None:
                client = paramiko.SSHClient()
                client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
                client.connect(
                    self.host,
                    port=self.port,
                    username="root",
                    pkey=paramiko.Ed25519Key.from_private_key_file(str(self.key_path)),
                    timeout=timeout,
                    banner_timeout=timeout,
                    auth_timeout=timeout,
                    allow_agent=False,
                    look_for_keys=False,
                )
                client.get_transport().set_keepalive(15)
                self._client = client
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def run(
        self, command: str, timeout: float = 120.0, stdin: bytes | None = None
    ) -> CommandResult:
        """Run a command to completion; stdout/stderr are collected whole."""
        return self.start(command, stdin=stdin).wait(timeout)

    def start(self, command: str, stdin: bytes | None = None) -> RunningCommand:
        """Start a command and return at once; `RunningCommand.wait()` collects it."""
        try:
            client = self.connect()
            chan = client.get_transport().open_session(timeout=30)
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError) as err:
            self.close()
            raise GuestLost(
                f"guest {self.name}: SSH session lost ({err or type(err).__name__})"
            ) from err
        return RunningCommand(self.name, command, chan)

    def deploy(self, src: Path = PROJECT_ROOT / "guest") -> None:
        """Copy the guest package to GUEST_DIR in one round trip (a tarball on stdin)."""
        self.deploy_tarball(guest_tarball(src))

    def deploy_tarball(self, tarball: bytes) -> None:
        """Replace GUEST_DIR/guest with a gzipped tarball's `guest/` (as `git archive` of a
        revision gives it, so another revision's code needs no folder on the host)."""
        self.run(
            f"rm -rf {GUEST_DIR}/guest && mkdir -p {GUEST_DIR} && tar -xzf - -C {GUEST_DIR}",
            stdin=tarball,
        ).check()


def guest_tarball(src: Path = PROJECT_ROOT / "guest") -> bytes:
    """The guest package at `src` as a gzipped tarball of `guest/`, caches left out."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="guest", filter=lambda ti: None if "__pycache__" in ti.name else ti)
    return buf.getvalue()


class RunningCommand:
    """A command started in the background on a guest (a server waiting for its client)."""

    def __init__(self, guest: str, command: str, chan: paramiko.Channel):
        self.guest, self.command, self.chan = guest, command, chan
        self._out, self._err = io.BytesIO(), io.BytesIO()  # what was read before wait()

    def wait_for_stderr(self, text: str, timeout: float) -> bool:
        """Read the command's output until `text` appears on its stderr (a server's
        "listening" event): True, or False if the command ended or `timeout` passed first.
        What is read is kept for `wait()`."""
        return self._wait_for(self._err, text, timeout)

    def wait_for_stdout(self, text: str, timeout: float) -> bool:
        """As `wait_for_stderr`, for a command that says it is ready on its stdout."""
        return self._wait_for(self._out, text, timeout)

    def _wait_for(self, stream: io.BytesIO, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        needle = text.encode()
        while needle not in stream.getvalue():
            if self.chan.recv_ready():
                self._out.write(self.chan.recv(65536))
            elif self.chan.recv_stderr_ready():
                self._err.write(self.chan.recv_stderr(65536))
            elif self.chan.exit_status_ready() or time.monotonic() > deadline:
                return False
            else:
                time.sleep(0.01)
        return True

    def wait(self, timeout: float) -> CommandResult:
        self.chan.settimeout(timeout)
        out, err = self._out, self._err
        deadline = time.monotonic() + timeout
        while not (
            self.chan.exit_status_ready()
            and not self.chan.recv_ready()
            and not self.chan.recv_stderr_ready()
        ):
            if self.chan.recv_ready():
                out.write(self.chan.recv(65536))
            elif self.chan.recv_stderr_ready():
                err.write(self.chan.recv_stderr(65536))
            elif time.monotonic() > deadline:
                self.chan.close()
                raise GuestError(
                    f"{self.guest}: `{self.command}` did not finish in {timeout:.0f} s"
                )
            else:
                time.sleep(0.01)
        status = self.chan.recv_exit_status()
        self.chan.close()
        return CommandResult(
            self.command,
            status,
            out.getvalue().decode(errors="replace"),
            err.getvalue().decode(errors="replace"),
        )
