"""The pure parts of link capture: finding a link's endpoint, the pcap walk, the size bound."""

from __future__ import annotations

import struct

import pytest

from host.capture import (
    PCAP_HEADER,
    Bounds,
    CaptureError,
    interface_alias,
    link_end,
    pcap_records,
    whole_prefix,
)
from host.lab import LabState, NodeState


def _state() -> LabState:
    def node(name: str, index: int, links: list[str]) -> NodeState:
        nics = [
            {"name": f"eth{k + 1}", "link": link, "mac": f"52:54:01:01:{index:02x}:{k + 1:02x}"}
            for k, link in enumerate(links)
        ]
        return NodeState(name, f"sb-l-{name}", 20000 + index, "", 1, 512, nics)

    return LabState(
        lab="l",
        run_id="r",
        slot=1,
        accel="tcg",
        image="default",
        image_digest="d",
        run_dir="/nonexistent",
        key_path="/nonexistent/key",
        owner_pid=1,
        config_path=None,
        created=0.0,
        nodes=[node("a", 0, ["a-b"]), node("b", 1, ["a-b", "b-c"]), node("c", 2, ["b-c"])],
    )


def _pcap(*lengths: int, big_endian: bool = False) -> bytes:
    o = ">" if big_endian else "<"
    out = struct.pack(o + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, n in enumerate(lengths):
        out += struct.pack(o + "IIII", i, 0, n, n) + bytes([i]) * n
    return out


def test_a_link_is_captured_at_its_first_endpoint_in_node_order():
    end = link_end(_state(), "b-c")
    assert (end.node, end.domain, end.mac) == ("b", "sb-l-b", "52:54:01:01:01:02")


def test_an_unknown_link_is_named_with_the_labs_links():
    with pytest.raises(CaptureError, match=r"no link 'x-y' \(links: a-b, b-c\)"):
        link_end(_state(), "x-y")


@pytest.mark.parametrize("max_bytes, snaplen", [(50, 1500), (1 << 20, 10), (1 << 20, 1 << 20)])
def test_bounds_out_of_range_are_refused(max_bytes, snaplen):
    with pytest.raises(CaptureError):
        Bounds(max_bytes, snaplen)


@pytest.mark.parametrize("big_endian", [False, True])
def test_records_are_walked_in_either_byte_order_and_a_cut_record_is_left_out(big_endian):
    data = _pcap(60, 100, 70, big_endian=big_endian)
    ends = [end for _off, end in pcap_records(data)]
    assert ends == [PCAP_HEADER + 76, PCAP_HEADER + 76 + 116, len(data)]
    assert [end for _o, end in pcap_records(data[:-1])] == ends[:2]


def test_not_a_pcap_is_refused():
    with pytest.raises(CaptureError, match="not a pcap"):
        list(pcap_records(b"\x00" * 40))


def test_the_kept_prefix_ends_on_a_whole_record_within_the_bound():
    data = _pcap(60, 100, 70)
    assert whole_prefix(data, len(data)) == (3, len(data))
    assert whole_prefix(data, len(data) - 1) == (2, PCAP_HEADER + 76 + 116)
    assert whole_prefix(data, PCAP_HEADER + 75) == (0, PCAP_HEADER)


def test_the_netdev_interface_is_found_by_mac_in_the_live_xml():
    xml = """<domain><devices>
      <interface type='user'><mac address='52:54:00:01:00:00'/><alias name='net0'/></interface>
      <interface type='udp'><mac address='52:54:01:01:00:01'/><alias name='net1'/></interface>
    </devices></domain>"""
    assert interface_alias(xml, "52:54:01:01:00:01".upper()) == "net1"
    with pytest.raises(CaptureError, match="no interface"):
        interface_alias(xml, "52:54:01:01:00:09")
