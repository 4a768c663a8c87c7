"""The mount's helper process: everything the server needs done *through* its own mount.

Rules
  * A FUSE server must never wait on its own mount: a synchronous request (open, close, a
    lookup) that its loop has read and not answered when the server is killed is waited for
    uninterruptibly, and the dying server then never lets go of /dev/fuse -- the mount hangs and
    every program in it with it.  So these waits happen here, in a separate process that holds
    no /dev/fuse descriptor: if the server dies, the kernel aborts the connection, our waits end
    with ENOTCONN, and we go (we also get SIGKILL when the server's thread that started us ends).
  * Standard library only, run as a script: it starts in tens of milliseconds.
  * "unpin" never waits on the mount (munmap sends no synchronous request) and is answered at
    once: the server waits for that answer inside a flush handler.

Protocol (JSON lines; stdin commands, stdout answers)
  {"op": "pin", "ino": I, "path": P}        map P read-only shared, fault its pages in, keep it
  {"op": "unpin", "ino": I, "seq": S}       -> {"seq": S}: let go now (or after the current step)
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import sys
import threading

P = 4096
PIN_MAX = 256 << 20  # bytes of one file kept mapped (its first ones)
PIN_CHUNK = 4 << 20  # bytes faulted in per step: an unpin waits for at most one step
MADV_POPULATE_READ, PROT_READ, MAP_SHARED, PR_SET_PDEATHSIG = 22, 1, 1, 1
MAP_FAILED = ctypes.c_void_p(-1).value

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]  # fmt: skip
libc.mmap.restype = ctypes.c_void_p
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class Pin:
    __slots__ = ("addr", "size", "busy", "cancel")

    def __init__(self):
        self.addr, self.size, self.busy, self.cancel = 0, 0, True, False


class Pinner:
    def __init__(self, mountpoint: str):
        self.mnt = mountpoint
        self.pins: dict[int, Pin] = {}
        self.lock = threading.Lock()
        self.out_lock = threading.Lock()
        self.pin_jobs: queue.Queue = queue.Queue()

    def answer(self, msg: dict) -> None:
        line = json.dumps(msg) + "\n"
        with self.out_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    def path(self, p: str) -> str:
        return os.path.join(self.mnt, p.lstrip("/"))

    def run(self) -> None:
        threading.Thread(target=self.pin_loop, daemon=True).start()
        for line in sys.stdin:
            msg = json.loads(line)
            op = msg["op"]
            if op == "pin":
                with self.lock:
                    if msg["ino"] in self.pins:
                        continue
                    self.pins[msg["ino"]] = pin = Pin()
                self.pin_jobs.put((msg["ino"], pin, msg["path"]))
            elif op == "unpin":
                self.unpin(msg["ino"])
                self.answer({"seq": msg["seq"]})

    def unpin(self, ino: int) -> None:
        with self.lock:
            pin = self.pins.pop(ino, None)
            if pin is None:
                return
            pin.cancel = True
            if pin.busy:
                return  # the pin thread lets go after its current step
            addr, pin.addr = pin.addr, 0
        if addr:
            libc.munmap(addr, pin.size)

    def pin_loop(self) -> None:
        while True:
            ino, pin, path = self.pin_jobs.get()
            try:
                if not pin.cancel:
                    self.fault_in(pin, self.path(path))
            except OSError:
                pass  # gone, renamed, not readable, poisoned: nothing to keep
            finally:
                with self.lock:
                    pin.busy = False
                    addr = pin.addr if pin.cancel else 0
                    if addr:
                        pin.addr = 0
                if addr:
                    libc.munmap(addr, pin.size)

    def fault_in(self, pin: Pin, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = min(-(-os.fstat(fd).st_size // P) * P, PIN_MAX)
            if size == 0 or pin.cancel:
                return
            addr = libc.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
            if addr in (None, MAP_FAILED):
                return
        finally:
            os.close(fd)  # the mapping holds the file
        with self.lock:
            pin.addr, pin.size = addr, size
        for off in range(0, size, PIN_CHUNK):
            if pin.cancel:
                return
            libc.madvise(addr + off, min(PIN_CHUNK, size - off), MADV_POPULATE_READ)  # EIO: skip


def main() -> None:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when we end (stdin closed)
    if os.getppid() == 1:
        return
    Pinner(sys.argv[1]).run()


if __name__ == "__main__":
    main()
