"""fsdax: file I/O over device extents with the kernel's fs/dax.c rules."""
