"""Requests as the kernel writes them, for driving ``Operations.dispatch`` without a mount."""

import os

from daxkit.fuse import proto


def request(opcode: int, node: int, body: bytes = b"", *, uid: int = 0, gid: int = 0) -> memoryview:
    head = proto.IN_HEADER.pack(
        proto.IN_HEADER.size + len(body), opcode, 7, node, uid, gid, os.getpid(), 0, 0
    )
    return memoryview(head + body)


def answer(parts) -> tuple[int, bytes]:
    """(errno, payload) of a reply."""
    length, error, _ = proto.OUT_HEADER.unpack(parts[0])
    payload = b"".join(bytes(p) for p in parts[1:])
    assert length == proto.OUT_HEADER.size + len(payload)
    return -error, payload


def call(ops, opcode: int, node: int, body: bytes = b"") -> tuple[int, bytes]:
    return answer(ops.dispatch(request(opcode, node, body)))


def rw(fh: int, offset: int, size: int) -> bytes:
    return proto.RW_IN.pack(fh, offset, size, 0, 0, 0, 0)


def setattr_in(valid: int, *, fh: int = 0, size: int = 0, mode: int = 0, uid: int = 0, gid: int = 0) -> bytes:
    return proto.SETATTR_IN.pack(valid, 0, fh, size, 0, 1, 2, 0, 0, 0, 0, mode, 0, uid, gid, 0)
