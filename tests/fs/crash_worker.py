"""The workload the crash test kills: metadata-heavy, forever, on a mounted daxfs.

Files under /sealed are written, fsynced, renamed into place and then never touched again; each
is recorded in a sidecar JSON (atomically replaced) only after its rename returned, so after any
kill every recorded file must be there with exactly its bytes.  Everything under /scratch is
churned: create, write, rename, unlink, truncate, punch, mkdir, rmdir."""

import hashlib
import json
import os
import random
import sys

import daxkit

image, sidecar = sys.argv[1], sys.argv[2]
sealed = json.load(open(sidecar)) if os.path.exists(sidecar) else {}
rng = random.Random(os.getpid())
dev = daxkit.open(image)
fs = daxkit.mount(dev)
for d in ("/sealed", "/scratch"):
    if not fs.exists(d):
        fs.mkdir(d)
print("ready", flush=True)

n = max((int(p[9:]) + 1 for p in sealed), default=0)
while True:
    op = rng.random()
    names = fs.listdir("/scratch")
    if op < 0.2:  # a sealed file: write, fsync, rename into place, record
        data = rng.randbytes(rng.choice([10, 4096, 5000, 20000]))
        tmp = f"/sealed/.tmp-{n}"
        try:
            with fs.open(tmp, "w") as f:
                for i in range(0, len(data), 3000):
                    f.write(data[i : i + 3000])
                f.fsync()
        except daxkit.NoSpace:
            fs.unlink(tmp)
            continue
        fs.rename(tmp, f"/sealed/s{n}")
        sealed[f"/sealed/s{n}"] = hashlib.sha256(data).hexdigest()
        old = sorted(sealed, key=lambda p: int(p[9:]))[:-100] if len(sealed) > 100 else []
        for path in old:  # forget first, then remove: the record never names a missing file
            del sealed[path]
        with open(sidecar + ".tmp", "w") as out:
            json.dump(sealed, out)
        os.replace(sidecar + ".tmp", sidecar)
        for path in old:
            fs.unlink(path)
        for name in fs.listdir("/sealed"):  # leftovers of a kill between write and rename
            if name.startswith(".tmp-") and name != tmp[8:]:
                fs.unlink(f"/sealed/{name}")
        n += 1
    elif op < 0.45 or not names:
        path = f"/scratch/f{rng.randrange(50)}"
        try:
            with fs.open(path, "w") as f:
                f.pwrite(rng.randbytes(rng.randrange(1, 9000)), rng.randrange(0, 20000))
                if rng.random() < 0.5:
                    f.fsync()
        except daxkit.DaxError:
            pass
    else:
        name = rng.choice(names)
        path = f"/scratch/{name}"
        try:
            if name.startswith("d"):
                fs.rmdir(path) if rng.random() < 0.5 else fs.rename(path, f"/scratch/d{rng.randrange(50)}")
            elif op < 0.6:
                fs.unlink(path)
            elif op < 0.7:
                fs.rename(path, f"/scratch/f{rng.randrange(50)}")
            elif op < 0.8:
                with fs.open(path, "r+") as f:
                    f.truncate(rng.randrange(0, 12000))
            elif op < 0.9:
                with fs.open(path, "r+") as f:
                    f.fallocate(
                        daxkit.FALLOC_FL_PUNCH_HOLE | daxkit.FALLOC_FL_KEEP_SIZE, rng.randrange(0, 8192), 4096
                    )
            else:
                fs.mkdir(f"/scratch/d{rng.randrange(50)}")
        except daxkit.DaxError:
            pass
