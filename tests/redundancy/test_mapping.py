"""Mappings through the parity layer: raw stores are covered at persist; before it, never
wrong bytes; the safe accessors repair; on_poison hears only losses."""

import gc
import os

import pytest

import daxkit

from .conftest import GROUP, P, lower_off, read_all


def test_persisted_stores_are_protected(held):
    dev, h = held
    m = dev.map(GROUP * P, 2 * GROUP * P)
    data = os.urandom(3 * P)
    m.buf[5 * P : 8 * P] = data
    dev.want[GROUP * P + 5 * P : GROUP * P + 8 * P] = data
    m.persist()
    for page in (GROUP + 6, 2 * GROUP + 1):  # the stored page itself, and one in the other group
        dev.lower.inject_poison(lower_off(dev, page * P + 128), 128)
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert m.read(6 * P, P) == bytes(dev.want[(GROUP + 6) * P : (GROUP + 7) * P])
    assert h.calls == []
    m.close()
    rep = dev.repair()
    assert rep.lost == [] and rep.corrupt == []


def test_before_persist_a_stale_group_loses_rather_than_lies(held):
    dev, h = held
    m = dev.map(0, GROUP * P)
    m.buf[P : P + 64] = b"\xaa" * 64  # raw store, not persisted
    dev.want[P : P + 64] = b"\xaa" * 64
    dev.lower.inject_poison(lower_off(dev, 3 * P), 64)  # another page of the same group
    assert read_all(dev, 3 * P, P)[0] == 0  # parity is behind: the rebuilt page fails its CRC
    assert [(o, n) for o, n, _ in h.calls] == [(3 * P, P)]  # lost, and said so
    m.close()  # persists: the rest of the group is protected again
    assert read_all(dev, P, P) == (P, bytes(dev.want[P : 2 * P]))
    dev.recovery_write(3, 0, bytes(P))
    dev.want[3 * P : 4 * P] = bytes(P)
    dev.lower.inject_poison(lower_off(dev, P), P)
    assert read_all(dev, 0, GROUP * P) == (GROUP * P, bytes(dev.want[: GROUP * P]))


def test_before_persist_a_stored_page_keeps_its_clean_lines(held):
    dev, h = held
    m = dev.map(0, GROUP * P)
    m.buf[2 * P : 2 * P + 8] = b"12345678"  # raw store into line 0, not persisted
    dev.want[2 * P : 2 * P + 8] = b"12345678"
    dev.lower.inject_poison(lower_off(dev, 2 * P + 1024), 64)  # a line the store did not touch
    assert read_all(dev, 2 * P, P) == (P, bytes(dev.want[2 * P : 3 * P]))  # clean lines kept
    assert h.calls == []
    m.close()
    rep = dev.repair()
    assert rep.corrupt == [] and rep.lost == []


def test_safe_accessors_repair(held):
    dev, h = held
    m = dev.map(0, 4 * GROUP * P)
    dev.lower.inject_poison(lower_off(dev, 3 * GROUP * P + 100), 1)
    assert m.read(3 * GROUP * P, P) == bytes(dev.want[3 * GROUP * P : 3 * GROUP * P + P])
    dev.lower.inject_poison(lower_off(dev, 2 * GROUP * P + 200), 1)
    m.write(2 * GROUP * P + 4000, b"written")  # a store into a page with latent poison
    dev.want[2 * GROUP * P + 4000 : 2 * GROUP * P + 4007] = b"written"
    m.persist(2 * GROUP * P, P)
    assert h.calls == [] and dev.lower.poisoned_ranges() == []
    m.close()
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert not dev.repair().corrupt


def test_poison_errors_speak_logical_offsets(held):
    dev, h = held
    m = dev.map(GROUP * P, GROUP * P)
    heard = []
    m.on_poison = lambda off, n: heard.append((off, n))
    assert m.offset == GROUP * P
    for page in (GROUP + 2, GROUP + 3):
        dev.lower.inject_error(lower_off(dev, page * P) // 512, 1, notify=False)
    dev.lower.scrub()
    assert heard == [(2 * P, 256), (3 * P, 256)]
    with pytest.raises(daxkit.PoisonError) as e:
        m.read(2 * P, P)
    assert e.value.offset == (GROUP + 2) * P and e.value.done == 0
    with pytest.raises(daxkit.PoisonError) as e:
        m.write(3 * P, b"x")
    assert e.value.offset == (GROUP + 3) * P
    m.recover(2 * P, bytes(P))  # page-aligned recovery through the mapping
    dev.want[(GROUP + 2) * P : (GROUP + 3) * P] = bytes(P)
    m.recover(3 * P, bytes(P))
    dev.want[(GROUP + 3) * P : (GROUP + 4) * P] = bytes(P)
    m.close()
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert dev.repair().as_dict() == {"repaired": [], "corrupt": [], "lost": [], "metadata": []}


def test_a_forgotten_mapping_is_persisted_and_let_go(held):
    dev, h = held
    m = dev.map(0, P)
    m.buf[:4] = b"gone"
    dev.want[:4] = b"gone"
    del m
    gc.collect()
    dev.store(b"", 0)
    dev.store(b"x", 5 * P)  # the next call through the device picks it up
    dev.want[5 * P] = ord("x")
    assert dev._par.pins == {}
    assert not dev.repair().corrupt
    dev.lower.inject_poison(lower_off(dev, 0), 64)
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
