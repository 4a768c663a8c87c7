"""The parity layer's on-media layout: geometry, header, intent record (pure, no device)."""

import pytest

from daxkit.redundancy.layout import (
    AIM,
    LIMIT,
    choose_geometry,
    geometry,
    pack_header,
    pack_intent,
    unpack_header,
    unpack_intent,
)

P = 4096


@pytest.mark.parametrize("mib", [8, 64, 256, 4096, 1 << 16])
def test_default_overhead_aims_at_one_percent(mib):
    geo = choose_geometry(mib * 256)
    assert geo.overhead <= AIM
    assert geometry(mib * 256, geo.group - 1) is None or geometry(mib * 256, geo.group - 1).overhead > AIM
    regions = [0, geo.intent_start, geo.csum_start, geo.parity_start, geo.data_start, geo.lower_pages]
    assert regions == sorted(regions)
    assert geo.ngroups * geo.group >= geo.ndata > (geo.ngroups - 1) * geo.group
    assert geo.csum_pages * (P // 4) >= geo.ndata
    assert geo.data_start + geo.ndata == geo.lower_pages


def test_small_devices_get_two_percent_or_are_refused():
    geo = choose_geometry(2 * 256)
    assert AIM < geo.overhead <= LIMIT
    with pytest.raises(ValueError, match="too small"):
        choose_geometry(256)
    assert choose_geometry(256, group=8).group == 8  # an explicit group is taken as asked


def test_header_round_trip_and_damage():
    geo = choose_geometry(2048, group=16)
    raw = bytearray(pack_header(geo).ljust(P, b"\0"))
    assert unpack_header(raw) == (geo, "")
    assert unpack_header(bytes(P))[1] == "no parity header"
    raw[20] ^= 1
    assert unpack_header(raw)[1] == "parity header checksum mismatch"


def test_intent_record():
    rec = pack_intent(7, 1234, 0xDEADBEEF)
    assert len(rec) == 64 and unpack_intent(rec) == (1234, 0xDEADBEEF)
    assert unpack_intent(bytes(64)) is None
    torn = bytearray(rec)
    torn[20] ^= 0xFF
    assert unpack_intent(torn) is None  # a torn record is no record
