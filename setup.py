# The one native file: the machine-check-safe copy (SPEC 2.6). Everything else is pure Python.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "daxkit._copymc",
            sources=["src/daxkit/_copymc.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
