"""Address helpers: the int/bytes conventions the codecs rely on."""

from __future__ import annotations

import pytest

from guest.stack.wire.addr import MAC_BROADCAST, ipv4, ipv4_str, is_multicast_mac, mac, mac_str


def test_ipv4_round_trip() -> None:
    assert ipv4("192.168.0.1") == 0xC0A80001
    assert ipv4_str(0xC0A80001) == "192.168.0.1"
    assert ipv4_str(ipv4("255.255.255.255")) == "255.255.255.255"


@pytest.mark.parametrize("text", ["1.2.3", "1.2.3.4.5", "256.0.0.1", "a.b.c.d", "1.2.3.-4", ""])
def test_ipv4_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        ipv4(text)


def test_mac() -> None:
    assert mac("52:54:00:12:34:56") == bytes.fromhex("525400123456")
    assert mac("52-54-00-12-34-56") == bytes.fromhex("525400123456")
    assert mac_str(bytes.fromhex("525400123456")) == "52:54:00:12:34:56"
    assert is_multicast_mac(MAC_BROADCAST) and not is_multicast_mac(mac("52:54:00:12:34:56"))
    with pytest.raises(ValueError):
        mac("52:54:00:12:34")
