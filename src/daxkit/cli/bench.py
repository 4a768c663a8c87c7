"""`daxkit bench`: run the benchmarks in the repository's benchmarks/ folder."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import DaxError


def _bench_dir() -> Path:
    env = os.environ.get("DAXKIT_BENCHMARKS")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[3] / "benchmarks", Path.cwd() / "benchmarks"]
    for c in candidates:
        if (c / "run.py").is_file():
            return c
    raise DaxError("cannot find the benchmarks/ folder (install from a checkout, or set DAXKIT_BENCHMARKS)")


def run_bench(quick: bool = False, only: str | None = None) -> None:
    d = _bench_dir()
    spec = importlib.util.spec_from_file_location("daxkit_benchmarks_run", d / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(quick=quick, only=only)
