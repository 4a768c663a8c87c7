"""libfuse's ``fuse_main`` taken apart, so the session can ask for one thing libfuse 3.14 cannot.

Rules
  * Without FUSE_HANDLE_KILLPRIV_V2 the kernel asks the server for ``security.capability``
    before every write(2) (file_remove_privs: FUSE marks a filesystem SB_NOSEC only under that
    flag, so "no capability here" is never remembered).  That is a round trip per 4 KiB write,
    cached or not: measured on fio's 4 KiB random write through the mount, 45k IOPS with it and
    124k without.  libfuse 3.14 predates the flag, so the session's replies go through a writev
    of ours (``fuse_session_custom_io``) that adds it to the INIT reply; reads go straight to
    libc's read.
  * The flag hands the server one duty: a write by a user who may not keep set-user-ID and
    set-group-ID bits clears them.  The kernel sends exactly those writes through uncached
    (not write-back), so the write handler clears the bits on any write that is not a write-back
    (``mount.py``).
  * Anything that fails here falls back to what ``fuse_main`` does: the mount works, the kernel
    asks for the capability again.

Theory of operation
  ``fuse_main(ops_p, ops_size, argv)``: fuse_new with the library and mount options, fuse_mount,
  the custom io, the single-threaded fuse_loop, fuse_unmount, fuse_destroy.  Signals stay with
  the caller (``mount._run_until_signal``), as they did with ``fuse_main``: its handlers are
  installed only over SIG_DFL, never over Python's.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

FUSE_HANDLE_KILLPRIV_V2 = 1 << 28  # linux/fuse.h (protocol 7.33)
OUT_HEADER, INIT_OUT_MIN = 16, 24  # sizeof(fuse_out_header); fuse_init_out up to max_write


class _Args(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)),
                ("allocated", ctypes.c_int)]  # fmt: skip


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


WRITEV = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_int,
                          ctypes.c_void_p)  # fmt: skip
READ = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)


class _CustomIo(ctypes.Structure):
    _fields_ = [("writev", WRITEV), ("read", READ), ("splice_receive", ctypes.c_void_p),
                ("splice_send", ctypes.c_void_p)]  # fmt: skip


class _InitOut(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("max_readahead", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]  # fmt: skip


_libc = ctypes.CDLL(None)  # no use_errno: errno must reach libfuse as writev left it
_libc.writev.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_int]
_libc.writev.restype = ctypes.c_ssize_t


class Session:
    """One run of the loop, with the INIT reply amended."""

    def __init__(self, lib):
        self.lib = lib
        self.init_seen = False
        self.killpriv_v2 = False
        self._writev = WRITEV(self._send)
        # libc's read takes the fd, buffer and length and ignores libfuse's fourth argument
        self._read = ctypes.cast(ctypes.cast(_libc.read, ctypes.c_void_p), READ)
        lib.fuse_new_31.argtypes = [ctypes.POINTER(_Args), ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        lib.fuse_new_31.restype = ctypes.c_void_p
        lib.fuse_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.fuse_loop.argtypes = [ctypes.c_void_p]
        lib.fuse_unmount.argtypes = [ctypes.c_void_p]
        lib.fuse_destroy.argtypes = [ctypes.c_void_p]
        lib.fuse_get_session.argtypes = [ctypes.c_void_p]
        lib.fuse_get_session.restype = ctypes.c_void_p
        lib.fuse_session_fd.argtypes = [ctypes.c_void_p]
        lib.fuse_session_custom_io.argtypes = [ctypes.c_void_p, ctypes.POINTER(_CustomIo), ctypes.c_int]

    def _send(self, fd, iov, count, userdata):
        if not self.init_seen and count >= 2:
            # The first reply of a session answers INIT (the kernel sends nothing else before it).
            self.init_seen = True
            if iov[0].len == OUT_HEADER and iov[1].len >= INIT_OUT_MIN:
                out = _InitOut.from_address(iov[1].base)
                if out.major == 7:  # libfuse speaks 7.31; the kernel reads the flag at any minor
                    out.flags |= FUSE_HANDLE_KILLPRIV_V2
                    self.killpriv_v2 = True
        return _libc.writev(fd, iov, count)

    def main(self, argv: list[bytes], ops_p, ops_size: int) -> int:
        """``fuse_main`` for ``argv`` as mfusepy builds it ([prog, flags..., -o OPTS, MNT])."""
        lib = self.lib
        opts = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == b"-o"]
        mountpoint = argv[-1]
        args_list = [argv[0]] + [x for o in opts for x in (b"-o", o)]
        c_argv = (ctypes.c_char_p * (len(args_list) + 1))(*args_list, None)
        args = _Args(len(args_list), c_argv, 0)
        f = lib.fuse_new_31(ctypes.byref(args), ops_p, ops_size, None)
        if not f:
            return 1
        try:
            if lib.fuse_mount(f, mountpoint) != 0:
                return 1
            try:
                se = lib.fuse_get_session(f)
                io = _CustomIo(self._writev, self._read, None, None)
                if lib.fuse_session_custom_io(se, ctypes.byref(io), lib.fuse_session_fd(se)) != 0:
                    log.debug("custom io refused; the kernel will ask for security.capability")
                return 1 if lib.fuse_loop(f) else 0
            finally:
                lib.fuse_unmount(f)
        finally:
            lib.fuse_destroy(f)
