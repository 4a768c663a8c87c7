"""Tests that only real persistent memory exercises (``make test-hardware``).  Each finds its
device on its own -- or from DAXKIT_PMEM (/dev/pmemN), DAXKIT_DAX (/dev/daxX.Y), DAXKIT_DAX_DIR
(a folder on a DAX-mounted file system) -- and skips, saying what it needs, where there is none."""

import glob
import os
import shutil

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "hardware: needs real persistent memory (make test-hardware)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/hardware/" in str(item.fspath):
            item.add_marker(pytest.mark.hardware)


def first(env: str, pattern: str) -> str:
    path = os.environ.get(env) or next(iter(sorted(glob.glob(pattern))), None)
    if not path:
        pytest.skip(f"no {pattern} on this machine (set {env} to name one)")
    if not os.access(path, os.R_OK | os.W_OK):
        pytest.skip(f"{path} needs root (or its group) to open read-write")
    return path


def dax_mount_dir() -> str:
    path = os.environ.get("DAXKIT_DAX_DIR")
    if not path:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 3 and any(o == "dax" or o.startswith("dax=") for o in fields[3].split(",")):
                    path = fields[1]
                    break
    if not path or not os.access(path, os.W_OK):
        pytest.skip("no writable DAX-mounted file system (mount -o dax, or set DAXKIT_DAX_DIR)")
    return path


def need_ndctl() -> None:
    if shutil.which("ndctl") is None or os.geteuid() != 0:
        pytest.skip("needs ndctl and root (error injection on the platform)")
