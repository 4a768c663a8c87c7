import os

import pytest

import daxkit
from daxkit.redundancy import ParityDevice, format_parity

from ..conftest import Holder

MiB = 1 << 20
P = daxkit.PAGE_SIZE
GROUP = 16  # small groups: many of them on an 8 MiB image


@pytest.fixture
def img(tmp_path):
    return str(tmp_path / "par.img")


@pytest.fixture
def pdev(img):
    """A parity device over a fresh 8 MiB image, filled with random bytes; ``pdev.want`` is
    what every byte should read as."""
    lower = daxkit.create(img, 8 * MiB)
    format_parity(lower, group=GROUP)
    dev = ParityDevice(lower)
    dev.want = bytearray(os.urandom(dev.size))
    dev.store(dev.want, 0)
    yield dev
    dev.close()


@pytest.fixture
def held(pdev):
    h = Holder()
    pdev.holder = h
    return pdev, h


def lower_off(dev, off: int) -> int:
    return dev.geometry.data_start * P + off


def read_all(dev, off: int, n: int) -> tuple[int, bytes]:
    buf = bytearray(n)
    got = dev.mc_read(buf, off)
    return got, bytes(buf)
