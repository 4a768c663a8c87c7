"""A software badblocks entry that the table merges with a sector a bad range explains is still
known bad, sector by sector (the table merges neighbours; knowledge must not merge away)."""

import daxkit

P = 4096


def test_a_software_entry_next_to_a_precise_one_stays_known(dev):
    dev.inject_poison(P, 64)  # latent poison at the start of page 1
    assert dev.mc_read(bytearray(64), P) == 0  # consumption: (P, 64) becomes a precise bad range
    dev.badblocks.add("0 8")  # a software entry for page 0: merged with page 1's sector
    assert [(e.sector, e.count) for e in dev.badblocks] == [(0, 9)]
    assert dev.known_errors(0, 2 * P) == [(0, P + 64)]
    assert dev.mc_read(bytearray(P), 0) == 0  # page 0 is not handed out
    r = dev.read_recover(0, P)
    assert r.bad == [(0, P)]
    dev.close()
    with daxkit.open(dev.path) as again:
        assert again.known_errors(0, 2 * P) == [(0, P + 64)]
