"""What `pip install` puts on a user's path: the harness and its built-ins under `harness.plugins`, never a
generic top-level `plugins` package (it would clash with any project that has one)."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (found,) = out.glob("retrieval_harness-*.whl")
    return found


def test_the_wheel_installs_no_top_level_plugins_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"harness"}, tops
    for module in ("harness/plugins/checks/beats_baseline.py", "harness/plugins/heads/adapter.py", "harness/plugins/losses.py",
                   "harness/registry.py", "harness/checks.py"):
        assert module in names, module


def test_the_installed_built_ins_load_from_the_wheel_alone(wheel, tmp_path):
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = ("import importlib.util, harness.registry as r\n"
             "print(r.__file__)\n"
             "print(r.get('heads', 'adapter').plugin, len(r.components('checks')))\n"
             "print(importlib.util.find_spec('plugins'))\n")
    env = {**os.environ, "PYTHONPATH": str(target), "HARNESS_LOAD_PLUGINS": ""}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    where, adapter, absent = out.stdout.splitlines()
    assert where.startswith(str(target)), where  # the wheel's copy, not the checkout
    assert adapter.startswith("harness.plugins.heads.adapter ") and int(adapter.split()[1]) >= 12, adapter
    assert absent == "None"  # `import plugins` finds nothing
