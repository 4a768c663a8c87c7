"""Helpers shared by the command-line tests."""

import os

import daxkit

P = 4096


def check_error(r, *words) -> str:
    """One `daxkit: error:` line on stderr, a non-zero exit, no traceback, and every word in it."""
    err = r.stderr.decode()
    assert r.returncode != 0, (r.returncode, err)
    assert err.startswith("daxkit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    return err


def fs_image(path, size="8M", files=None) -> str:
    """An image with a daxfs holding ``files`` ({path: bytes}), made through the API (fast)."""
    path = str(path)
    with daxkit.create(path, size) as dev:
        daxkit.mkfs(dev)
        with daxkit.mount(dev) as fs:
            for name, data in (files or {}).items():
                if name.endswith("/"):
                    fs.mkdir(name.rstrip("/"))
                    continue
                with fs.open(name, "w") as f:
                    f.write(data)
                    f.fsync()
    return path


def listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


def fs_names(image, path="/") -> list[str]:
    with daxkit.open(image) as dev, daxkit.mount(dev, readonly=True) as fs:
        return fs.listdir(path)
