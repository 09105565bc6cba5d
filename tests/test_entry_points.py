"""A real installed package contributes a plugin through the ``retrieval_harness`` entry-point group."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "sample-plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(FIXTURE)],
        check=True,
    )
    return target


def harness(site, *args, load=None):
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("HARNESS_LOAD_PLUGINS", None)
    if load is not None:
        env["HARNESS_LOAD_PLUGINS"] = load
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, capture_output=True, text=True)


def test_installed_package_registers_a_head(site):
    out = harness(site, "plugins", "--kind", "heads", "--json", load="sample")
    assert out.returncode == 0, out.stderr
    heads = {row["name"]: row["plugin"] for row in json.loads(out.stdout)}
    assert heads["shared_linear"] == "sample"
    assert heads["identity"] == "harness.plugins.heads.identity"


def test_autoload_can_be_disabled(site):
    out = harness(site, "plugins", "--kind", "heads", "--json", load="")
    assert out.returncode == 0, out.stderr
    assert "shared_linear" not in {row["name"] for row in json.loads(out.stdout)}


def test_broken_entry_point_names_itself_and_its_package(site):
    out = harness(site, "plugins", load="sample_broken")
    assert out.returncode == 2
    message = " ".join(out.stderr.split())
    assert "could not load plugin 'sample_broken'" in message
    assert "harness-sample-plugin" in message and "ModuleNotFoundError" in message
    assert message.endswith("fix it, or run without it: HARNESS_LOAD_PLUGINS="), message  # the other plugins: none here
    assert "Traceback" not in out.stderr


def test_traceback_on_request_for_a_plugin_that_does_not_load(site, monkeypatch):
    monkeypatch.setenv("HARNESS_TRACEBACK", "1")
    out = harness(site, "plugins", load="sample_broken")
    assert out.returncode == 2 and "Traceback (most recent call last)" in out.stderr, out.stderr
