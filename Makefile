# Two entry points: `make demo` (the main job) and `make test`. Each builds .venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-hardware bench venv sysdeps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Debian packages: fuse3 + libfuse3-dev + pkg-config (the FUSE mount), fio (the FUSE fio test),
# strace (copy_mc's no-system-call check), libisal-dev (ISA-L's CRC32C: the parity store path,
# src/daxkit/_parity.c; without it that path runs in Python), e2fsprogs + xfsprogs + util-linux
# (ext4 and xfs on a loop device for the real-backend tests: mkfs, filefrag, losetup). Installed
# when missing and we are root with apt-get; elsewhere the tests that need them skip.
SYSDEPS := fuse3 libfuse3-dev pkg-config fio strace libisal-dev e2fsprogs xfsprogs util-linux

sysdeps:
	@missing=""; for p in $(SYSDEPS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian packages:$$missing"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
				|| echo "warning: could not install$$missing; tests that need them will skip"; \
		else echo "note: missing$$missing (not root or no apt-get); tests that need them will skip"; fi; \
	fi

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

demo: sysdeps venv
	$(BIN)/daxkit demo

test: sysdeps venv
	$(BIN)/python -m pytest tests

# What only real persistent memory exercises (README, "Real devices"): run as root on a machine with
# /dev/pmemN, /dev/daxX.Y or a DAX mount (or name them: DAXKIT_PMEM, DAXKIT_DAX, DAXKIT_DAX_DIR).
test-hardware: sysdeps venv
	$(BIN)/python -m pytest tests/hardware -v -rs

bench: venv
	$(BIN)/daxkit bench

clean:
	rm -rf $(VENV) build src/*.egg-info src/daxkit/*.so
