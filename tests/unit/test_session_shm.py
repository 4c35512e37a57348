"""Shared regions: what the peer may not do to memory it was given really fails."""

from __future__ import annotations

import mmap
import os

import pytest

from guest.stack.session.shm import SharedRegion, fence, page_round


def test_read_only_view_cannot_be_written() -> None:
    region = SharedRegion.create(4096)
    region.view[0:5] = b"stack"
    fd = region.peer_fd(readonly=True)
    try:
        peer = SharedRegion.attach(fd, 4096, writable=False)
        assert bytes(peer.view[0:5]) == b"stack"
        assert peer.view.readonly
        with pytest.raises(TypeError):
            peer.view[0] = 0
        region.view[0:5] = b"STACK"
        assert bytes(peer.view[0:5]) == b"STACK"  # shared, not copied
        peer.close()
    finally:
        region.close()


def test_read_only_fd_refuses_a_writable_mapping() -> None:
    region = SharedRegion.create(4096)
    fd = region.peer_fd(readonly=True)
    try:
        with pytest.raises(PermissionError):
            mmap.mmap(fd, 4096, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        with pytest.raises(OSError):
            os.write(fd, b"x")
    finally:
        os.close(fd)
        region.close()


def test_future_write_seal_even_on_a_writable_fd() -> None:
    """Even with an O_RDWR fd (as if the reopen trick were unavailable), the seal refuses a new
    writable mapping, while the creator's existing mapping keeps working."""
    region = SharedRegion.create(4096)
    fd = region.peer_fd(readonly=False)
    try:
        with pytest.raises(PermissionError):
            mmap.mmap(fd, 4096, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        region.view[0] = 42
        assert region.view[0] == 42
    finally:
        os.close(fd)
        region.close()


@pytest.mark.parametrize("peer_owned", [False, True])
def test_size_is_sealed(peer_owned: bool) -> None:
    """A peer that could shrink the file would make our next access raise SIGBUS."""
    region = SharedRegion.create_for_peer(8192) if peer_owned else SharedRegion.create(8192)
    fd = region.peer_fd(readonly=False)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 1 << 20)
    finally:
        os.close(fd)
        region.close()


def test_peer_owned_region_is_read_only_for_its_creator() -> None:
    region = SharedRegion.create_for_peer(4096)
    fd = region.peer_fd(readonly=False)
    try:
        peer = SharedRegion.attach(fd, 4096, writable=True)
        peer.view[0:3] = b"app"
        assert bytes(region.view[0:3]) == b"app"
        with pytest.raises(TypeError):
            region.view[0] = 1
        peer.close()
    finally:
        region.close()


def test_attach_refuses_short_or_unsealed_files() -> None:
    fd = os.memfd_create("plain")
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(ValueError, match="sealed"):
            SharedRegion.attach(fd, 4096, writable=True)
        with pytest.raises(ValueError, match="bytes"):
            SharedRegion.attach(fd, 8192, writable=True)
    finally:
        os.close(fd)


def test_close_with_live_views_does_not_crash() -> None:
    region = SharedRegion.create(4096)
    view = region.view[10:20]
    region.close()  # the mapping stays until `view` goes away
    view[0] = 1
    assert view[0] == 1
    del view


def test_helpers() -> None:
    fence()
    assert page_round(1) == mmap.PAGESIZE and page_round(mmap.PAGESIZE) == mmap.PAGESIZE
