"""The layers import only downward: the library knows nothing of HTTP, the CLI
or the pipeline, and the pipeline never loads the web framework."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules_after_import(packages: list[str]) -> set[str]:
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        for name in {packages!r}:
            pkg = importlib.import_module(name)
            for info in pkgutil.walk_packages(pkg.__path__, name + "."):
                if not info.name.endswith("__main__"):
                    importlib.import_module(info.name)
        print("\\n".join(sorted(sys.modules)))
        """
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.split())


def _offending(modules: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in banned)


@pytest.mark.parametrize(
    ("packages", "banned"),
    [
        (["recommender"], ("fastapi", "starlette", "uvicorn", "training", "serving")),
        (["training"], ("fastapi", "starlette", "uvicorn", "serving")),
    ],
)
def test_every_module_imports_only_downward(packages, banned):
    bad = _offending(_modules_after_import(packages), banned)
    assert not bad, bad


def test_the_check_catches_an_upward_import():
    # the same check, shown a module set with a web-framework import, must object
    assert _offending({"recommender.answers", "fastapi.routing"}, ("fastapi",)) == [
        "fastapi.routing"
    ]
