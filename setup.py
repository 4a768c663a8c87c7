# Native code, each file for one job that measurement showed needs it:
#   _copymc.c  the machine-check-safe copy (SPEC 2.6);
#   _parity.c  the parity layer's store path (SPEC 4.2), on Intel's ISA-L (libisal-dev).
# Without ISA-L's headers _parity is not built and the parity layer uses its Python path (slower
# stores, the same bytes).  Everything else is pure Python.
import os

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
ext = [Extension("daxkit._copymc", sources=["src/daxkit/_copymc.c"], extra_compile_args=FLAGS)]
if any(os.path.exists(os.path.join(d, "isa-l", "crc.h")) for d in ("/usr/include", "/usr/local/include")):
    ext.append(
        Extension(
            "daxkit._parity",
            sources=["src/daxkit/_parity.c"],
            libraries=["isal"],
            extra_compile_args=[*FLAGS, "-O3"],
        )
    )
else:
    print("note: ISA-L (libisal-dev) not found: daxkit._parity not built; parity stores take the Python path")

setup(ext_modules=ext)
