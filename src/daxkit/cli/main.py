"""The `daxkit` command (SPEC 5).  Verbs and options follow ndctl where ndctl has the verb;
machine-readable output is JSON.  Every failure becomes one `daxkit: error: ...` line on stderr
and a non-zero exit; this is the only place exceptions are turned into text.

The rules every verb obeys (whole or nothing, quiet ends on signals and on closed pipes) live once
in ``safety.py``; a verb writes its output through ``write_local``/``write_fs`` and marks a change
it makes with ``signals.critical()``."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import stat
import sys
import time

import daxkit

from ..errors import DaxError, InvalidArgument
from ..units import parse_size
from .progress import Progress
from .safety import EXIT_PIPE, Interrupted, signals, silence_stdout, write_fs, write_local

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DAMAGE = 4  # fsck found damage, get --recover lost bytes (fsck(8)'s "errors left uncorrected")


class CliError(Exception):
    """A problem with the command line itself, found after parsing."""


# -- argument types: every numeric option names itself and its value when refused ---------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CliError(message)


class _VerbParser(_Parser):
    """A verb's parser: options may come between positionals (``ls IMG -l /d``)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _size(text: str) -> int:
    """A byte count or offset: "4096", "64M", "1G"; never negative."""
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"must be a size >= 0, not {text!r}")
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}") from None


_INTEGER = re.compile(r"\s*(0[xX][0-9a-fA-F]+|[0-9]+)\s*")


def _integer(minimum: int):
    """A plain integer (decimal or 0x hex) >= ``minimum``: block numbers and counts are not sizes,
    so "1K" is refused rather than read as 1024."""

    def parse(text: str) -> int:
        m = _INTEGER.fullmatch(text)
        if not m:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, not {text!r}")
        value = int(m.group(1), 0)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def _emit(obj) -> None:
    print(json.dumps(obj, indent=2))


# -- device verbs ----------------------------------------------------------------------------
def cmd_create(a) -> None:
    try:
        dev = daxkit.create(a.image, a.size, clear_err_unit=a.clear_err_unit, force=a.force)
    except InvalidArgument as e:  # name the option
        raise CliError(f"{'--clear-err-unit' if 'clear_err_unit' in str(e) else '--size'}: {e}") from None
    with dev:
        _emit(dev.info())


def _open(a, *, readonly: bool = False):
    """Open the verb's device.  Read-only verbs pass readonly=True, so they work on images and
    devices the caller can only read (SPEC 7)."""
    return daxkit.open(a.image, readonly=readonly, sysfs_root=a.sysfs_root)


def cmd_info(a) -> None:
    with _open(a, readonly=True) as dev:
        _emit(dev.info())


def cmd_list(a) -> None:
    if a.image is None:  # every namespace the sysfs tree shows, as `ndctl list [-M]` prints them
        from ..device.backends.sysfs import list_namespaces

        found = list_namespaces(a.sysfs_root)
        if not a.media_errors:
            found = [{k: v for k, v in ns.items() if not k.startswith("badblock")} for ns in found]
        _emit(found[0] if len(found) == 1 else found)  # ndctl: one object alone, several as a list
        return
    with _open(a, readonly=True) as dev:
        out = {"dev": a.image, "size": dev.size, "clear_err_unit": dev.clear_err_unit}
        if a.media_errors:
            out.update(dev.media_errors())
        _emit(out)


def cmd_inject_error(a) -> None:
    with _open(a, readonly=a.status) as dev:
        if a.status:
            records = dev.injected_errors()
            if records:  # SPEC 5: ndctl's shape, merged; nothing at all when there are none
                _emit({"badblocks": records})
            return
        if a.block is None:
            raise CliError("inject-error needs -B/--block BLOCK (or --status)")
        with signals.critical():
            if a.uninject:
                dev.uninject_error(a.block, a.count)
            else:
                dev.inject_error(a.block, a.count, notify=not a.no_notify, saturate=a.saturate)


def cmd_start_scrub(a) -> None:
    with _open(a) as dev:
        with Progress("scrub") as bar:
            report = dev.scrub(progress=bar)
        sums = _scrub_checksums(dev)
    _emit(report.as_dict() if sums is None else {**report.as_dict(), "checksums": sums})


def _scrub_checksums(dev) -> dict | None:
    """SPEC 4.2: on a parity filesystem the scrub also verifies every data page's checksum and
    rebuilds what does not match (fs.repair).  A filesystem mounted read-write elsewhere is left
    to its holder, which has heard of the poison the scrub found; None: no parity filesystem."""
    try:
        with daxkit.mount(dev, readonly=True) as fs:
            if fs.redundancy["mode"] != "parity":
                return None
    except daxkit.CorruptFilesystem:
        return None  # not a filesystem (or too damaged to mount: fsck says more)
    try:
        fs = daxkit.mount(dev)
    except daxkit.Busy as e:
        return {"verified": False, "reason": f"the filesystem is mounted read-write by another process "
                f"({e.strerror}); its holder repairs what the scrub found: run `daxkit repair` to verify "
                f"checksums"}  # fmt: skip
    try:
        with signals.critical():
            return {"verified": True, **fs.repair().as_dict()}
    finally:
        fs.unmount()


def cmd_wait_scrub(a) -> None:
    with _open(a, readonly=True) as dev:
        with Progress("wait-scrub") as bar:
            while True:
                pid, done, total = dev.scrub_progress()
                if not pid:
                    break
                bar(done, total)
                time.sleep(0.05)
            bar(1, 1)
        _emit({"scrub_count": dev.scrub_count, **dev.media_errors()})


def cmd_clear_errors(a) -> None:
    with _open(a) as dev:
        with signals.critical():
            cleared = dev.clear_errors()
        _emit({"cleared": [{"offset": o, "length": n} for o, n in cleared]})


def cmd_badblocks(a) -> None:
    with _open(a, readonly=a.add is None) as dev:
        if a.add is not None:
            with signals.critical():
                dev.badblocks.add(a.add)
        else:
            sys.stdout.write(dev.badblocks.text())


def cmd_read(a) -> None:
    with _open(a, readonly=True) as dev:
        data = dev.pread(a.length, a.offset)
    write_local(a.output, data)


def cmd_write(a) -> None:
    if (a.input is None) == (a.zero is None):
        raise CliError("write needs exactly one of -i FILE or --zero N")
    if a.input == "-":
        data = sys.stdin.buffer.read()
    elif a.input is not None:
        try:
            with open(a.input, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DaxError(f"cannot read input: {e.strerror}", errno=e.errno, path=a.input) from None
    with _open(a) as dev:
        if a.zero is not None:
            if a.offset + a.zero > dev.size:  # refused before the zeroes are made
                raise daxkit.InvalidArgument(
                    f"--zero {a.zero} at --offset {a.offset} is outside the device (size {dev.size})"
                )
            data = bytes(a.zero)
        with signals.critical():
            n = dev.pwrite(data, a.offset)
    _emit({"written": n, "offset": a.offset})


# -- filesystem verbs ------------------------------------------------------------------------------
class _Mounted:
    """Open the image and mount its daxfs for one command."""

    def __init__(self, a, readonly: bool):
        self.a, self.readonly = a, readonly

    def __enter__(self):
        self.dev = _open(self.a, readonly=self.readonly)
        try:
            self.fs = daxkit.mount(self.dev, readonly=self.readonly)
        except BaseException:
            self.dev.close()
            raise
        return self.fs

    def __exit__(self, *exc):
        self.fs.unmount()
        self.dev.close()


def cmd_mkfs(a) -> None:
    with _open(a) as dev:
        with signals.critical():
            daxkit.mkfs(dev, force=a.force, redundancy=a.redundancy, parity_group=a.parity_group)
        with daxkit.mount(dev, readonly=True) as fs:
            _emit({"image": a.image, **fs.statfs(), "redundancy": fs.redundancy})


_LS_TYPES = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
             stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFSOCK: "socket"}  # fmt: skip


def cmd_ls(a) -> None:
    with _Mounted(a, readonly=True) as fs:
        st = fs.stat(a.path)
        # one view of the directory: beside a live writer, names listed then stat'ed may be gone
        if stat.S_ISDIR(st.st_mode):
            entries = fs.scandir(a.path)
        else:
            entries = [(a.path.rstrip("/").rsplit("/", 1)[-1], st)]
        rows = []
        for name, s in entries:
            row = {"name": name, "type": _LS_TYPES.get(stat.S_IFMT(s.st_mode), "file"), "size": s.st_size}
            if stat.S_ISLNK(s.st_mode):
                row["target"] = fs.readlink(a.path.rstrip("/") + "/" + name)
            rows.append(row)
    if a.long:
        _emit(rows)
    else:
        for r in rows:
            print(r["name"] + ("/" if r["type"] == "dir" else ""))


def cmd_put(a) -> None:
    if a.src == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(a.src, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DaxError(f"cannot read: {e.strerror}", errno=e.errno, path=a.src) from None
    with _Mounted(a, readonly=False) as fs:
        n = write_fs(fs, a.dst, data)
    _emit({"path": a.dst, "written": n})


def cmd_get(a) -> int:
    """Every byte of SRC at DST, or a failure with nothing at DST (SPEC 5).  ``--recover``
    delivers every recoverable byte, zeroes where lost, and lists the lost ranges on stderr."""
    with _Mounted(a, readonly=True) as fs:
        with fs.open(a.src, "r") as f:
            if a.recover:
                got = f.pread(f.stat().st_size, 0, flags=daxkit.RWF_RECOVERY_DATA)
                data, lost = got.data, got.bad
            else:
                data, lost = f.read(), []
    write_local(a.dst, data)
    if not lost:
        return 0
    print(json.dumps({"lost": [{"path": a.src, "offset": o, "length": n} for o, n in lost]}), file=sys.stderr)
    return EXIT_DAMAGE


def cmd_rm(a) -> None:
    with _Mounted(a, readonly=False) as fs:
        _remove(fs, a.path, a.recursive)


def _remove(fs, path: str, recursive: bool) -> None:
    if stat.S_ISDIR(fs.lstat(path).st_mode):  # a symlink is removed, never followed
        if recursive:
            for name in fs.listdir(path):
                _remove(fs, f"{path.rstrip('/')}/{name}", True)
        if path.strip("/") not in ("", "."):  # rm -r / empties the root; the root itself stays
            fs.rmdir(path)
    else:
        fs.unlink(path)


def cmd_mkdir(a) -> None:
    with _Mounted(a, readonly=False) as fs:
        fs.mkdir(a.path)


def cmd_bmap(a) -> None:
    with _Mounted(a, readonly=True) as fs:
        _emit(fs.bmap(a.path))


def cmd_scan(a) -> None:
    with _Mounted(a, readonly=True) as fs:
        _emit(fs.scan())


def cmd_fsck(a) -> int:
    with _open(a, readonly=not a.repair) as dev:
        report = daxkit.fsck(dev, repair=a.repair)
    _emit(report)
    return 0 if report["clean"] else EXIT_DAMAGE


def cmd_df(a) -> None:
    with _Mounted(a, readonly=True) as fs:
        _emit({**fs.statfs(), "redundancy": fs.redundancy})


def cmd_repair(a) -> int:
    """SPEC 4.2: repair everything repairable; JSON report; exit 4 when something is lost."""
    with _Mounted(a, readonly=False) as fs:
        with signals.critical():
            report = fs.repair()
    _emit(report.as_dict())
    return EXIT_DAMAGE if report.lost else 0


def cmd_mount(a) -> int:
    from ..fuse.mount import mount_background, serve

    if a.foreground:
        signum = serve(a.image, a.mountpoint, private=a.private)
        return 128 + signum if signum else 0  # stopped by a signal: unmounted, quietly
    pid = mount_background(a.image, a.mountpoint, private=a.private)
    _emit({"image": a.image, "mountpoint": a.mountpoint, "pid": pid})
    return 0


def cmd_umount(a) -> None:
    from ..fuse.mount import unmount

    unmount(a.mountpoint, lazy=a.lazy)


def cmd_demo(a) -> None:
    from .demo import run_demo

    run_demo(keep=a.keep)


def cmd_bench(a) -> None:
    from .bench import run_bench

    run_bench(quick=a.quick, only=a.only)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="daxkit", description="DAX memory with media-error (poison) recovery")
    p.add_argument("--version", action="version", version=f"daxkit {daxkit.__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_VerbParser)
    sub.required = True

    def verb(name: str, fn, help: str, image: bool = True, optional_image: bool = False, sysfs: bool = True):
        sp = sub.add_parser(name, help=help, description=help)
        if image:
            what = "device: an image, /dev/pmemN, /dev/daxX.Y or a regular file"
            sp.add_argument("image", metavar="IMG", help=what, nargs="?" if optional_image else None)
        if image and sysfs:  # create makes an image; mount serves with the machine's own /sys
            sp.add_argument(
                "--sysfs-root", metavar="DIR", default="/sys", help="where a real device's errors are listed"
            )
        sp.set_defaults(fn=fn)
        return sp

    sp = verb("create", cmd_create, "create a new emulated device image", sysfs=False)
    sp.add_argument("-s", "--size", type=_size, required=True, help="data area size, e.g. 64M")
    sp.add_argument(
        "--clear-err-unit", type=_integer(daxkit.LINE_SIZE), default=daxkit.DEFAULT_CLEAR_ERR_UNIT
    )
    sp.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")

    verb("info", cmd_info, "geometry and error counts (JSON)")

    sp = verb(
        "list", cmd_list, "list the device (JSON), or without IMG every namespace in sysfs, like ndctl list",
        optional_image=True,
    )  # fmt: skip
    sp.add_argument("-M", "--media-errors", action="store_true", help="include media errors")

    sp = verb("inject-error", cmd_inject_error, "inject, uninject or list media errors")
    sp.add_argument("-B", "--block", type=_integer(0), help="first 512-byte block")
    sp.add_argument("-n", "--count", type=_integer(1), default=1, help="number of blocks (default 1)")
    sp.add_argument("-N", "--no-notify", action="store_true", help="do not scrub: badblocks stay as they are")
    sp.add_argument("-S", "--saturate", action="store_true", help="poison whole blocks")
    sp.add_argument("-d", "--uninject", action="store_true", help="remove injected errors")
    sp.add_argument("-t", "--status", action="store_true", help="list injected errors (JSON)")

    verb("start-scrub", cmd_start_scrub, "run an address range scrub")
    verb("wait-scrub", cmd_wait_scrub, "wait for a running scrub to finish")
    verb("clear-errors", cmd_clear_errors, "clear every known media error (their data is lost)")

    sp = verb("badblocks", cmd_badblocks, "print or add badblocks entries, like the sysfs file")
    sp.add_argument("--add", metavar='"SECTOR COUNT"', help="add an acknowledged entry")

    sp = verb("read", cmd_read, "block-path read")
    sp.add_argument("--offset", type=_size, required=True)
    sp.add_argument("--length", type=_size, required=True)
    sp.add_argument("-o", "--output", help="write to FILE (whole, or not at all) instead of stdout")

    sp = verb("write", cmd_write, "block-path write")
    sp.add_argument("--offset", type=_size, required=True)
    sp.add_argument("-i", "--input", help="bytes to write, from FILE (- for stdin)")
    sp.add_argument("--zero", type=_size, help="write N zero bytes")

    sp = verb("mkfs", cmd_mkfs, "make a daxfs filesystem on the device")
    sp.add_argument("-f", "--force", action="store_true", help="overwrite an existing filesystem")
    sp.add_argument(
        "--redundancy", choices=("none", "parity"), default="none",
        help="parity: XOR parity per group of data pages and a CRC32C per page (SPEC 4.2)",
    )  # fmt: skip
    group_help = "data pages per parity group (default: ~1%% space)"
    sp.add_argument("--parity-group", type=_integer(2), help=group_help)
    sp = verb("ls", cmd_ls, "list a directory of the filesystem")
    sp.add_argument("path", nargs="?", default="/", metavar="PATH")
    sp.add_argument("-l", "--long", action="store_true", help="JSON with type and size")
    sp = verb("put", cmd_put, "copy a local file (or - for stdin) into the filesystem, whole or not at all")
    sp.add_argument("src", metavar="SRC")
    sp.add_argument("dst", metavar="DST")
    sp = verb("get", cmd_get, "copy a file out of the filesystem (DST - for stdout), whole or not at all")
    sp.add_argument("src", metavar="SRC")
    sp.add_argument("dst", metavar="DST")
    sp.add_argument(
        "--recover",
        action="store_true",
        help="deliver every recoverable byte, zeroes where lost; list the lost ranges on stderr, exit 4",
    )
    sp = verb("rm", cmd_rm, "remove a file or an empty directory")
    sp.add_argument("path", metavar="PATH")
    sp.add_argument("-r", "--recursive", action="store_true")
    sp = verb("mkdir", cmd_mkdir, "make a directory")
    sp.add_argument("path", metavar="PATH")
    sp = verb("bmap", cmd_bmap, "a file's extents and device sectors (JSON)")
    sp.add_argument("path", metavar="PATH")
    verb("scan", cmd_scan, "every known media error and its owner (JSON)")
    sp = verb("fsck", cmd_fsck, "check the filesystem; exit 4 when damage is found (with --repair: is left)")
    sp.add_argument("--repair", action="store_true", help="rewrite damaged metadata copies from good ones")
    verb("df", cmd_df, "the filesystem's statfs and redundancy (JSON)")
    verb("repair", cmd_repair, "repair what redundancy allows; JSON report; exit 4 when something is lost")
    sp = verb("mount", cmd_mount, "serve the filesystem through FUSE", sysfs=False)
    sp.add_argument("mountpoint", metavar="MNT")
    sp.add_argument("--foreground", action="store_true", help="serve in this process until unmounted")
    sp.add_argument("--private", action="store_true", help="only the mounting user may use the mount")
    sp = verb("umount", cmd_umount, "unmount a FUSE mount", image=False)
    sp.add_argument("mountpoint", metavar="MNT")
    sp.add_argument("-l", "--lazy", action="store_true", help="detach now even if busy (umount -l)")

    sp = verb("demo", cmd_demo, "the whole story on a temporary image, verified step by step", image=False)
    sp.add_argument("--keep", action="store_true", help="keep the temporary image")

    sp = verb("bench", cmd_bench, "run the benchmarks and print ratios against their peers", image=False)
    sp.add_argument("--quick", action="store_true", help="fewer iterations")
    sp.add_argument("--only", help="run only benchmarks whose name contains this")
    return p


# -- turning outcomes into exit codes and one line of text -----------------------------------------
def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        msg = e.strerror
        if not isinstance(e, DaxError) and e.filename is not None:
            msg = f"{os.fsdecode(e.filename)}: {msg}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split("\n"))


def _say(line: str) -> None:
    try:
        print(f"daxkit: error: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass  # nowhere to say it: the exit status still does


def _run(argv: list[str] | None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:  # --help, --version: their text must reach a closed pipe quietly too
            sys.stdout.flush()
            raise
        code = args.fn(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except Interrupted as e:
        return 128 + e.signum
    except KeyboardInterrupt:  # SIGINT under a caller that kept its own handler
        return 128 + signal.SIGINT
    except CliError as e:
        _say(str(e))
        return EXIT_USAGE
    except OSError as e:
        if e.errno == errno.EPIPE:
            silence_stdout()
            return EXIT_PIPE
        _say(_message(e))
        return EXIT_ERROR
    except (ValueError, OverflowError, MemoryError) as e:
        _say(_message(e))
        return EXIT_ERROR
    except Exception as e:  # a bug below: still one line; DAXKIT_DEBUG=1 shows the traceback
        if os.environ.get("DAXKIT_DEBUG"):
            raise
        _say(f"internal error: {type(e).__name__}: {_message(e)} (DAXKIT_DEBUG=1 shows where)")
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    signals.install()
    try:
        return _run(argv)
    except Interrupted as e:  # a second signal while the first failure was being reported
        return 128 + e.signum
    finally:
        signals.restore()


if __name__ == "__main__":
    sys.exit(main())
