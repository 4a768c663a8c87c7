"""Issue 6 review: two processes mounting read-write at once.  The loser gets EBUSY; nothing
that reported success is lost, and the image stays whole."""

import subprocess
import sys
import textwrap

import daxkit

WRITER = textwrap.dedent(
    """
    import sys, daxkit
    image, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    done = 0
    while done < n:
        try:
            dev = daxkit.open(image)
            try:
                with daxkit.mount(dev) as fs:
                    with fs.open(f"/{tag}-{done}", "w") as f:
                        f.write(tag.encode() * 100)
                done += 1
                print(f"/{tag}-{done - 1}", flush=True)
            finally:
                dev.close()
        except daxkit.Busy:
            pass
    """
)


def test_racing_read_write_mounts_lose_nothing(tmp_path):
    image = str(tmp_path / "race.img")
    with daxkit.create(image, "8M") as dev:
        daxkit.mkfs(dev)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, image, tag, "40"], stdout=subprocess.PIPE, text=True)
        for tag in ("a", "b", "c")
    ]
    acknowledged = set()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        acknowledged |= set(out.split())
    assert len(acknowledged) == 120
    with daxkit.open(image) as dev:
        assert daxkit.fsck(dev)["clean"]
        with daxkit.mount(dev, readonly=True) as fs:
            names = {"/" + n for n in fs.listdir("/")}
    assert acknowledged <= names
