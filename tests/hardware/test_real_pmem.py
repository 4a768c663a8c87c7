"""What only real hardware exercises (README, "Real devices"): a pmem namespace's own clear on
write, MAP_SYNC on a DAX mount, device-dax's refusal to clear, and a real machine check
(SIGBUS, BUS_MCEERR_AR) turned into PoisonError."""

import os
import subprocess
import time

import pytest

import daxkit
from daxkit.units import PAGE_SIZE

from .conftest import dax_mount_dir, first, need_ndctl

P = PAGE_SIZE


def namespace_of(blockdev: str) -> str:
    import json

    out = json.loads(
        subprocess.run(["ndctl", "list", "-N"], capture_output=True, text=True, check=True).stdout
    )
    for ns in out if isinstance(out, list) else [out]:
        if ns.get("blockdev") == os.path.basename(blockdev):
            return ns["dev"]
    pytest.skip(f"ndctl knows no namespace for {blockdev}")


def wait_listed(dev, want: bool) -> None:
    deadline = time.monotonic() + 30
    while bool(dev.known_errors()) != want:
        assert time.monotonic() < deadline, "the kernel's badblocks did not change"
        time.sleep(0.1)


def test_pmem_write_clears_what_the_kernel_lists():
    need_ndctl()
    path = first("DAXKIT_PMEM", "/dev/pmem*")
    ns = namespace_of(path)
    block = (1 << 20) // 512  # 1 MiB in: far from any label area
    subprocess.run(
        ["ndctl", "inject-error", ns, "-B", str(block), "-n", "1"], check=True, capture_output=True
    )
    try:
        with daxkit.open(path) as dev:
            wait_listed(dev, True)
            with pytest.raises(daxkit.MediaError):
                dev.pread(P, block * 512 // P * P)
            assert dev.pwrite(bytes(P), block * 512 // P * P) == P  # pmem_do_write clears
            wait_listed(dev, False)
    finally:
        subprocess.run(
            ["ndctl", "inject-error", ns, "-B", str(block), "-n", "1", "--uninject"], capture_output=True
        )


def test_map_sync_on_a_dax_mount(tmp_path):
    where = os.path.join(dax_mount_dir(), f"daxkit-hw-{os.getpid()}")
    with open(where, "wb") as f:
        f.truncate(2 << 20)
    try:
        with daxkit.open(where) as dev:
            assert dev._region.synchronous  # MAP_SHARED_VALIDATE|MAP_SYNC was accepted
            with dev.map(0, P) as m:
                m.write(0, b"durable")
                assert m.read(0, 7) == b"durable"
    finally:
        os.unlink(where)


def test_devdax_clear_error():
    """A write over a listed sector sends ND_CMD_CLEAR_ERROR to the bus: cleared and gone from
    the list, or refused with the platform's reason (EOPNOTSUPP) -- never taken for success."""
    path = first("DAXKIT_DAX", "/dev/dax*")
    with daxkit.open(path) as dev:
        bad = dev.known_errors()
        if not bad:
            pytest.skip(f"{path} has no listed media errors to clear (ndctl inject-error makes some)")
        page = bad[0][0] // P
        try:
            assert dev.recovery_write(page, 0, bytes(P)) == P
        except daxkit.NotSupported as e:
            assert "clear" in str(e)
        else:
            assert not dev.known_errors(page * P, P)


def test_real_machine_check_becomes_poison_error():
    need_ndctl()
    path = first("DAXKIT_PMEM", "/dev/pmem*")
    ns = namespace_of(path)
    block = (2 << 20) // 512
    subprocess.run(["ndctl", "inject-error", ns, "-B", str(block), "-n", "1", "--no-notify"], check=True,
                   capture_output=True)  # fmt: skip
    try:
        with daxkit.open(path) as dev, dev.map(0, 4 << 20) as m:
            with pytest.raises(daxkit.PoisonError) as ei:
                m.read(block * 512, 512)  # a real load of poison: SIGBUS with BUS_MCEERR_AR
            assert ei.value.offset // 512 == block
    finally:
        subprocess.run(
            ["ndctl", "inject-error", ns, "-B", str(block), "-n", "1", "--uninject"], capture_output=True
        )
