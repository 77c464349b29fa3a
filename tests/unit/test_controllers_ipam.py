"""Pod CIDR allocation per node."""

from __future__ import annotations

import pytest

from k3p_plugins.controller_manager.nodeipam import CIDRExhausted, CIDRSet, cidr_sets


def test_allocates_distinct_blocks_and_never_reuses_held_ones() -> None:
    s = CIDRSet("10.42.0.0/16", 24)
    got = [s.allocate() for _ in range(3)]
    assert got == ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]
    s.release("10.42.1.0/24")
    assert s.allocate() == "10.42.3.0/24"  # rotation: the freed block is not handed out at once
    assert s.used == 3


def test_occupied_blocks_are_skipped_and_exhaustion_is_reported() -> None:
    s = CIDRSet("10.0.0.0/23", 24)
    assert s.occupy("10.0.0.0/24")
    assert not s.occupy("192.168.0.0/24")  # not ours
    assert not s.occupy("10.0.0.0/25")  # wrong size
    assert s.allocate() == "10.0.1.0/24"
    with pytest.raises(CIDRExhausted):
        s.allocate()
    s.release("10.0.0.0/24")
    assert s.allocate() == "10.0.0.0/24"


def test_dual_stack_and_bad_masks() -> None:
    v4, v6 = cidr_sets("10.42.0.0/16,fd00:10:42::/56")
    assert v4.allocate() == "10.42.0.0/24"
    assert v6.allocate() == "fd00:10:42::/64"
    with pytest.raises(ValueError):
        CIDRSet("10.0.0.0/24", 16)
