import subprocess
import sys
import textwrap

import pytest

import daxkit

MiB = 1 << 20


@pytest.fixture
def img(tmp_path):
    return str(tmp_path / "dev.img")


@pytest.fixture
def dev(img):
    d = daxkit.create(img, 8 * MiB)
    yield d
    d.close()


class Holder:
    """A holder that records what it is told."""

    def __init__(self):
        self.calls = []

    def notify_failure(self, offset, length, flags):
        self.calls.append((offset, length, flags))
        return 0


@pytest.fixture
def holder():
    return Holder()


def run_py(code: str, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter (for real faults and for other processes)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def daxkit_cli(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the installed command line as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "daxkit.cli.main", *args], capture_output=True, input=input, timeout=timeout
    )


def file_digest(path: str) -> bytes:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).digest()
