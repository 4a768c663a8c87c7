"""Sequences the stateful model (test_model.py) once failed on, replayed as plain tests."""

import os

from .test_model import ParityModel

P = 4096


def test_latent_left_by_quick_repair_then_flip_in_same_group():
    """Page 2741 % 223 = 65 gets latent poison; ``repair(verify=False)`` repairs only known
    errors, so the poison stays (the model used to forget it).  The flip of page 510 % 223 = 64
    then fell into the same group 8: a double fault, which the notified poison's scrub made
    known and the layer rightly reported lost.  The model now refuses that flip."""
    state = ParityModel()
    try:
        state.nothing_lost()
        state.poison(first=0, lines=1, notify=False, page=2741)
        state.nothing_lost()
        state.repair(verify=False)
        state.nothing_lost()
        state.flip(at=0, n=1, page=510)
        state.nothing_lost()
        state.poison(first=0, lines=1, notify=True, page=0)
        state.nothing_lost()
        state.repair(verify=True)
        state.nothing_lost()
        state.everything()
        state.nothing_lost()
    finally:
        state.teardown()


def test_double_fault_beyond_the_guarantee_is_reported_exactly():
    """Beyond the guarantee (latent poison in page 65 plus a flip in page 64, one group): what
    cannot be rebuilt is lost and said exactly -- page 65's bad line and the whole of page 64
    (its CRC cannot be met) -- and never handed out; every other byte reads right."""
    s = ParityModel()
    try:
        s.want[:] = os.urandom(len(s.want))
        s.dev.store(s.want, 0)
        s.poison(first=0, lines=1, notify=False, page=65)
        s.dev.lower.store(bytes([s.want[64 * P] ^ 0xA5]), s.base + 64 * P)
        s.poison(first=0, lines=1, notify=True, page=0)  # its scrub makes page 65 known
        assert s.told == [(65 * P, 64, 0)]
        rep = s.dev.repair(verify=True)
        lost = [(64 * P, P + 64)]
        assert rep.lost == lost
        assert sorted((o, n) for o, n, _ in s.told) == [(64 * P, P), (65 * P, 64)]
        buf = bytearray(s.dev.size)
        assert s.dev.mc_read(buf, 0) == 64 * P
        assert s.dev.read_recover_into(buf, 0) == lost
        for page in range(s.npages):
            if page not in (64, 65):
                assert buf[page * P : page * P + P] == s.want[page * P : page * P + P], page
        assert buf[65 * P + 64 : 66 * P] == s.want[65 * P + 64 : 66 * P]
    finally:
        s.teardown()


def test_a_finished_update_is_not_in_flight_at_a_crash():
    """A recovery write of page 182 finished; then page 182 was flipped behind the layer and
    the process died.  The update-in-flight word was still standing, so the open took the page
    for torn and recomputed parity from the flipped bytes: wrong bytes for good.  Now an update
    clears the word when it is done, and the open's verify rebuilds the flipped page."""
    state = ParityModel()
    try:
        state.recovery_write(k=1, page=182, zero=False)
        state.flip(at=0, n=1, page=2412)  # 2412 % 223 == 182
        state.crash()
        state.nothing_lost()
        state.repair(verify=True)
        state.nothing_lost()
        state.everything()
    finally:
        state.teardown()
