"""Release artifacts: ``python -m build`` gives an sdist and a wheel (built from that sdist); the
wheel, installed into a fresh venv outside the checkout, runs ``wgdisco --version`` and the whole
``wgdisco demo`` (root and namespaces: a lab test).

The wheel carries the compiled data path and no C source or build leftovers; the sdist carries
what builds it (setup.py, the C source) and the docs, not the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

import wgdisco
from wgdisco.lab import skip_or_fail

pytestmark = pytest.mark.netns
CHECKOUT = Path(__file__).resolve().parents[2]


def test_sdist_and_wheel_build_and_the_wheel_runs_the_demo_from_a_fresh_venv(tmp_path: Path) -> None:
    try:
        import build  # noqa: F401  (the test extra; `make venv` installs it)
    except ImportError:
        skip_or_fail("needs the 'build' package (pip install -e '.[test]')")
    out = tmp_path / "dist"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(CHECKOUT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"python -m build: {time.monotonic() - start:.1f} s")
    version = wgdisco.__version__
    sdist, = out.glob(f"wgdisco-{version}.tar.gz")
    wheel, = out.glob(f"wgdisco-{version}-cp3*-linux_*.whl")  # platform-specific: it holds the .so

    names = zipfile.ZipFile(wheel).namelist()
    so = f"wgdisco/io/_fastpath{sysconfig.get_config_var('EXT_SUFFIX')}"
    assert so in names, names
    leftovers = [n for n in names if n.endswith((".c", ".h", ".o", ".pyc")) or n.startswith(("build/", "tests/"))]
    assert leftovers == []
    shipped = {str(p.relative_to(CHECKOUT)) for p in (CHECKOUT / "wgdisco").rglob("*.py")}
    assert shipped <= set(names), sorted(shipped - set(names))
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"setup.py", "pyproject.toml", "CHANGELOG.md", "wgdisco/io/_fastpath.c", "configs/wgdisco@.service",
            "docs/install.md"} <= members
    assert not [m for m in members if m.endswith(".so") or m.startswith(("tests/", "build/", ".venv/"))]

    # a fresh venv, elsewhere; nothing of the checkout on the path
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert pip.returncode == 0, pip.stderr[-3000:]
    shown = subprocess.run([str(venv / "bin/wgdisco"), "--version"], capture_output=True, text=True, check=True,
                           env=env, cwd=tmp_path).stdout.splitlines()
    assert shown[0] == f"wgdisco {version} ({venv}/lib/python{sys.version_info.major}.{sys.version_info.minor}"\
                       f"/site-packages/wgdisco)", shown
    assert shown[1].startswith("data path: compiled (wgdisco.io._fastpath, OpenSSL "), shown
    assert shown[2].startswith(f"Python {sys.version_info.major}.{sys.version_info.minor}.") and str(venv) in shown[2]
    userspace = subprocess.run([str(venv / "bin/wgdisco-userspace"), "--version"], capture_output=True, text=True,
                               env=env, cwd=tmp_path)
    assert userspace.returncode == 0 and userspace.stdout.startswith(f"wgdisco-userspace {version}")

    demo = subprocess.run([str(venv / "bin/wgdisco"), "demo"], capture_output=True, text=True, timeout=180,
                          env=env, cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "a <-> b" in demo.stdout
