"""The `daxkit` command (SPEC 5).  Verbs and options follow ndctl where ndctl has the verb;
machine-readable output is JSON.  Every failure becomes one `daxkit: error: ...` line on stderr
and a non-zero exit; this is the only place exceptions are turned into text."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time

import daxkit

from ..errors import DaxError
from ..units import parse_size
from .progress import Progress

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DAMAGE = 4  # fsck found damage (fsck(8)'s "filesystem errors left uncorrected")


class CliError(Exception):
    """A problem with the command line itself, found after parsing."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CliError(message)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _emit(obj) -> None:
    print(json.dumps(obj, indent=2))


# -- device verbs ----------------------------------------------------------------------------
def cmd_create(a) -> None:
    with daxkit.create(a.image, a.size, clear_err_unit=a.clear_err_unit, force=a.force) as dev:
        _emit(dev.info())


def cmd_info(a) -> None:
    with daxkit.open(a.image) as dev:
        _emit(dev.info())


def cmd_list(a) -> None:
    with daxkit.open(a.image) as dev:
        out = {"dev": a.image, "size": dev.size, "clear_err_unit": dev.clear_err_unit}
        if a.media_errors:
            out.update(dev.media_errors())
        _emit(out)


def cmd_inject_error(a) -> None:
    with daxkit.open(a.image) as dev:
        if a.status:
            records = dev.injected_errors()
            if records:  # SPEC 5: a merged JSON list; nothing at all when there are none
                _emit(records)
            return
        if a.block is None:
            raise CliError("inject-error needs -B/--block BLOCK (or --status)")
        if a.uninject:
            dev.uninject_error(a.block, a.count)
        else:
            dev.inject_error(a.block, a.count, notify=not a.no_notify, saturate=a.saturate)


def cmd_start_scrub(a) -> None:
    with daxkit.open(a.image) as dev:
        report = dev.scrub(progress=Progress("scrub"))
        _emit(report.as_dict())


def cmd_wait_scrub(a) -> None:
    with daxkit.open(a.image) as dev:
        bar = Progress("wait-scrub")
        while True:
            pid, done, total = dev.scrub_progress()
            if not pid or not _alive(pid):
                break
            bar(done, total)
            time.sleep(0.05)
        bar(1, 1)
        _emit({"scrub_count": dev.scrub_count, **dev.media_errors()})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cmd_clear_errors(a) -> None:
    with daxkit.open(a.image) as dev:
        cleared = dev.clear_errors()
        _emit({"cleared": [{"offset": o, "length": n} for o, n in cleared]})


def cmd_badblocks(a) -> None:
    with daxkit.open(a.image) as dev:
        if a.add is not None:
            dev.badblocks.add(a.add)
        else:
            sys.stdout.write(dev.badblocks.text())


def cmd_read(a) -> None:
    with daxkit.open(a.image) as dev:
        data = dev.pread(a.length, a.offset)
    if a.output:
        with open(a.output, "wb") as f:
            f.write(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


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
    else:
        data = bytes(a.zero)
    with daxkit.open(a.image) as dev:
        n = dev.pwrite(data, a.offset)
    _emit({"written": n, "offset": a.offset})


# -- filesystem verbs ------------------------------------------------------------------------------
class _Mounted:
    """Open the image and mount its daxfs for one command."""

    def __init__(self, image: str, readonly: bool):
        self.image, self.readonly = image, readonly

    def __enter__(self):
        self.dev = daxkit.open(self.image)
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
    with daxkit.open(a.image) as dev:
        daxkit.mkfs(dev, force=a.force)
        with daxkit.mount(dev, readonly=True) as fs:
            _emit({"image": a.image, **fs.statfs()})


def cmd_ls(a) -> None:
    with _Mounted(a.image, readonly=True) as fs:
        st = fs.stat(a.path)
        names = fs.listdir(a.path) if stat.S_ISDIR(st.st_mode) else [a.path.rstrip("/").rsplit("/", 1)[-1]]
        base = a.path if stat.S_ISDIR(st.st_mode) else a.path.rsplit("/", 1)[0] or "/"
        rows = []
        for name in names:
            s = fs.stat(f"{base.rstrip('/')}/{name}")
            rows.append(
                {"name": name, "type": "dir" if stat.S_ISDIR(s.st_mode) else "file", "size": s.st_size}
            )
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
    with _Mounted(a.image, readonly=False) as fs:
        with fs.open(a.dst, "w") as f:
            n = f.write(data)
            f.fsync()
    _emit({"path": a.dst, "written": n})


def cmd_get(a) -> None:
    with _Mounted(a.image, readonly=True) as fs:
        with fs.open(a.src, "r") as f:
            data = f.read()
    if a.dst == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        with open(a.dst, "wb") as out:
            out.write(data)


def cmd_rm(a) -> None:
    with _Mounted(a.image, readonly=False) as fs:
        _remove(fs, a.path, a.recursive)


def _remove(fs, path: str, recursive: bool) -> None:
    if stat.S_ISDIR(fs.stat(path).st_mode):
        if recursive:
            for name in fs.listdir(path):
                _remove(fs, f"{path.rstrip('/')}/{name}", True)
        fs.rmdir(path)
    else:
        fs.unlink(path)


def cmd_mkdir(a) -> None:
    with _Mounted(a.image, readonly=False) as fs:
        fs.mkdir(a.path)


def cmd_bmap(a) -> None:
    with _Mounted(a.image, readonly=True) as fs:
        _emit(fs.bmap(a.path))


def cmd_scan(a) -> None:
    with _Mounted(a.image, readonly=True) as fs:
        _emit(fs.scan())


def cmd_fsck(a) -> None:
    with daxkit.open(a.image) as dev:
        report = daxkit.fsck(dev)
    _emit(report)
    if not report["clean"]:
        raise SystemExit(EXIT_DAMAGE)


def cmd_mount(a) -> None:
    from ..fuse.mount import mount_background, serve

    if a.foreground:
        serve(a.image, a.mountpoint)
    else:
        pid = mount_background(a.image, a.mountpoint)
        _emit({"image": a.image, "mountpoint": a.mountpoint, "pid": pid})


def cmd_umount(a) -> None:
    from ..fuse.mount import unmount

    unmount(a.mountpoint)


def cmd_demo(a) -> None:
    from .demo import run_demo

    run_demo(keep=a.keep)


def cmd_bench(a) -> None:
    from .bench import run_bench

    run_bench(quick=a.quick, only=a.only)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="daxkit", description="DAX memory with media-error (poison) recovery")
    p.add_argument("--version", action="version", version=f"daxkit {daxkit.__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def verb(name: str, fn, help: str, image: bool = True):
        sp = sub.add_parser(name, help=help, description=help)
        if image:
            sp.add_argument("image", metavar="IMG", help="device image")
        sp.set_defaults(fn=fn)
        return sp

    sp = verb("create", cmd_create, "create a new emulated device image")
    sp.add_argument("-s", "--size", required=True, help="data area size, e.g. 64M")
    sp.add_argument("--clear-err-unit", type=int, default=daxkit.DEFAULT_CLEAR_ERR_UNIT)
    sp.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")

    verb("info", cmd_info, "geometry and error counts (JSON)")

    sp = verb("list", cmd_list, "list the device (JSON), like ndctl list")
    sp.add_argument("-M", "--media-errors", action="store_true", help="include media errors")

    sp = verb("inject-error", cmd_inject_error, "inject, uninject or list media errors")
    sp.add_argument("-B", "--block", type=_size, help="first 512-byte block")
    sp.add_argument("-n", "--count", type=_size, default=1, help="number of blocks (default 1)")
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
    sp.add_argument("-o", "--output", help="write to FILE instead of stdout")

    sp = verb("write", cmd_write, "block-path write")
    sp.add_argument("--offset", type=_size, required=True)
    sp.add_argument("-i", "--input", help="bytes to write, from FILE (- for stdin)")
    sp.add_argument("--zero", type=_size, help="write N zero bytes")

    sp = verb("mkfs", cmd_mkfs, "make a daxfs filesystem on the device")
    sp.add_argument("-f", "--force", action="store_true", help="overwrite an existing filesystem")
    sp = verb("ls", cmd_ls, "list a directory of the filesystem")
    sp.add_argument("path", nargs="?", default="/", metavar="PATH")
    sp.add_argument("-l", "--long", action="store_true", help="JSON with type and size")
    sp = verb("put", cmd_put, "copy a local file (or - for stdin) into the filesystem")
    sp.add_argument("src", metavar="SRC")
    sp.add_argument("dst", metavar="DST")
    sp = verb("get", cmd_get, "copy a file out of the filesystem (DST - for stdout)")
    sp.add_argument("src", metavar="SRC")
    sp.add_argument("dst", metavar="DST")
    sp = verb("rm", cmd_rm, "remove a file or an empty directory")
    sp.add_argument("path", metavar="PATH")
    sp.add_argument("-r", "--recursive", action="store_true")
    sp = verb("mkdir", cmd_mkdir, "make a directory")
    sp.add_argument("path", metavar="PATH")
    sp = verb("bmap", cmd_bmap, "a file's extents and device sectors (JSON)")
    sp.add_argument("path", metavar="PATH")
    verb("scan", cmd_scan, "every known media error and its owner (JSON)")
    verb("fsck", cmd_fsck, "check the filesystem; exit 4 when damage is found")
    sp = verb("mount", cmd_mount, "serve the filesystem through FUSE")
    sp.add_argument("mountpoint", metavar="MNT")
    sp.add_argument("--foreground", action="store_true", help="serve in this process until unmounted")
    sp = verb("umount", cmd_umount, "unmount a FUSE mount", image=False)
    sp.add_argument("mountpoint", metavar="MNT")

    sp = verb("demo", cmd_demo, "the whole story on a temporary image, verified step by step", image=False)
    sp.add_argument("--keep", action="store_true", help="keep the temporary image")

    sp = verb("bench", cmd_bench, "run the benchmarks and print ratios against their peers", image=False)
    sp.add_argument("--quick", action="store_true", help="fewer iterations")
    sp.add_argument("--only", help="run only benchmarks whose name contains this")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.fn(args)
        return 0
    except CliError as e:
        print(f"daxkit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (DaxError, OSError, ValueError) as e:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if isinstance(e, OSError) and not isinstance(e, DaxError) and e.filename:
            msg = f"{e.filename}: {msg}"
        print(f"daxkit: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("daxkit: error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
