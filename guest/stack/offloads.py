"""The offload levers of our user-level stack, by name: the one registry of them.

What each lever does is explained where it is applied (`nic.py`); this module only names them
and parses a choice of them, so the command lines and the host's lab-file schema can check an
`offload:` value without importing the stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The levers, in the order they are printed.
LEVERS: Final = ("csum", "tso", "gro")


@dataclass(frozen=True, slots=True)
class Offloads:
    """Which levers are on. `tso` implies `csum` (a TSO frame always carries the seed)."""

    csum: bool = False
    tso: bool = False
    gro: bool = False

    @classmethod
    def parse(cls, text: str) -> Offloads:
        """'none', 'all', or a comma list of `LEVERS` ('csum,gro'); ValueError otherwise."""
        text = text.strip().lower()
        if text in ("", "none", "off"):
            return cls()
        if text in ("all", "on"):
            return cls(True, True, True)
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in LEVERS]
        if bad:
            raise ValueError(
                f"unknown offload {', '.join(bad)!r}: use none, all, or a comma list of "
                f"{', '.join(LEVERS)}"
            )
        tso = "tso" in names
        return cls(csum="csum" in names or tso, tso=tso, gro="gro" in names)

    @property
    def vnet_hdr(self) -> bool:
        """PACKET_VNET_HDR is needed as soon as one lever is on."""
        return self.csum or self.tso or self.gro

    @property
    def features(self) -> dict[str, bool]:
        """ethtool -K features for `device.setup.take_over`: set together with the stack's
        own behaviour, so that the NIC does exactly what the stack leaves to it."""
        return {
            "rx": self.csum,
            "tx": self.csum,
            "sg": self.csum,
            "tso": self.tso,
            "gso": self.tso,
            "gro": self.gro,
            "lro": False,
        }

    def __str__(self) -> str:
        on = [n for n in LEVERS if getattr(self, n)]
        return ",".join(on) if on else "none"
