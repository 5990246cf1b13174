"""The unprivileged container's id map (plugins/mode_lxc/idmap.py): the passed-through
ids map to themselves, every other container id keeps the shift, host ranges never
overlap, and /etc/subuid gaps are named as the lines to add."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smbgw_plugins.mode_lxc.idmap import (
    CONTAINER_IDS,
    IdMapError,
    IdRange,
    MapLine,
    base_of,
    build,
    missing,
    parse_subid,
    subid_lines,
)

SUBUID = "root:100000:65536\n"


def test_passing_uid_1000_through_is_the_proxmox_admins_map() -> None:
    assert [line.config_value() for line in build("u", 100000, [IdRange(1000, 1000)])] == [
        "u 0 100000 1000", "u 1000 1000 1", "u 1001 101001 64535"]


def test_no_passthrough_is_proxmoxs_default_map() -> None:
    assert build("g", 100000, []) == [MapLine("g", 0, 100000, CONTAINER_IDS)]


def test_an_ad_range_above_the_container_ids_is_added_as_is() -> None:
    lines = build("u", 100000, [IdRange(1000, 1000), IdRange(200000, 299999), IdRange(70000, 79999)])
    assert [line.config_value() for line in lines][-2:] == ["u 70000 70000 10000", "u 200000 200000 100000"]


@pytest.mark.parametrize(("through", "said"), [
    ([IdRange(0, 10)], "root"),
    ([IdRange(100000, 999999)], "overlap 100000-165535"),
    ([IdRange(165535, 170000)], "overlap"),
])
def test_maps_the_kernel_would_refuse_are_errors(through: list[IdRange], said: str) -> None:
    with pytest.raises(IdMapError, match=said):
        build("u", 100000, through)


def test_subuid_is_read_as_shadow_reads_it_and_gaps_are_named() -> None:
    granted = parse_subid("# c\nroot:100000:65536\nbob:200000:65536\nroot:1000:1\nroot:x:1\nroot:5:0\n")
    assert granted == [IdRange(1000, 1000), IdRange(100000, 165535)]
    assert base_of(granted) == 100000
    lines = build("u", 100000, [IdRange(1000, 1000), IdRange(1005, 1005), IdRange(200000, 200009)])
    gaps = missing(lines, granted)
    assert gaps == [IdRange(1005, 1005), IdRange(200000, 200009)]
    assert subid_lines(gaps) == "root:1005:1, root:200000:10"
    assert missing(build("u", 100000, []), parse_subid(SUBUID)) == []
    assert base_of(parse_subid("root:1000:1\n")) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 99999), st.integers(0, 50)), max_size=6),
       st.lists(st.tuples(st.integers(165536, 2_000_000), st.integers(0, 5000)), max_size=3))
def test_every_map_covers_each_container_id_once_and_no_host_id_twice(
        low: list[tuple[int, int]], high: list[tuple[int, int]]) -> None:
    through = [IdRange(start, start + span) for start, span in low + high
               if not IdRange(start, start + span).overlaps(IdRange(100000, 165535))]
    lines = build("u", 100000, through)
    inside = sorted((line.inside, line.inside + line.count - 1) for line in lines)
    outside = sorted((line.outside, line.outside + line.count - 1) for line in lines)
    for ranges in (inside, outside):
        assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges)), "no overlap"
    covered = sum(line.count for line in lines if line.inside < CONTAINER_IDS)
    assert covered == CONTAINER_IDS, "every container id 0..65535 is mapped"
    for line in lines:
        if any(r.low <= line.inside <= r.high for r in through):
            assert line.inside == line.outside, "passed through"
        else:
            assert line.outside == 100000 + line.inside, "shifted"
