"""The example external plugin package is installed for real (pip, its own pyproject and entry point),
discovered through importlib.metadata like any third-party plugin, and gated by `harness run`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "harness-example-head"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install --target` the example package; a subprocess with it on PYTHONPATH sees its entry point."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(EXAMPLE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (target / "harness_example_head").is_dir() and list(target.glob("harness_example_head-*.dist-info"))
    return target


def harness(args, site, data_dir, cwd: Path = ROOT, **env):
    env = {**os.environ, "PYTHONPATH": str(site), "HARNESS_DATA_DIR": str(data_dir), **env}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_entry_point_registers_the_head_and_the_check(installed, data_dir):
    proc = harness(["plugins", "--json"], installed, data_dir)
    assert proc.returncode == 0, proc.stderr
    found = {(c["kind"], c["name"]): c["plugin"] for c in json.loads(proc.stdout)}
    assert found[("heads", "linear_residual")] == "example_head"
    assert found[("checks", "ndcg_floor")] == "example_head"
    # without the package, the same suite is refused, naming the unknown check and the valid ones
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(EXAMPLE / "suites" / "example.toml")],
                          capture_output=True, text=True, env={**os.environ, "HARNESS_DATA_DIR": str(data_dir)}, cwd=ROOT)
    assert proc.returncode == 2 and "checks.ndcg_floor" in proc.stderr and "unknown check" in proc.stderr


def test_the_example_head_is_gated(installed, data_dir, tmp_path):
    out = tmp_path / "report"
    # from outside the harness's checkout: the package's suite needs no path to it (baselines: the harness's own)
    proc = harness(["run", str(EXAMPLE / "suites" / "example.toml"), "--out", str(out), "--no-github-summary"], installed, data_dir,
                   cwd=tmp_path)
    report = json.loads((out / "report.json").read_text())
    (cand,) = report["candidates"]
    outcomes = {k: v["outcome"] for k, v in cand["checks"].items()}
    first = cand["training"]["0"]["scifact"]["epochs"][0]  # seed 0, the head trained on SciFact, epoch 0 (untrained)
    assert cand["config"]["head"] == "linear_residual" and first["ndcg10"]["scifact"] == pytest.approx(0.6451, abs=1e-4)
    assert set(outcomes) == {"finite", "loss_properties", "similarity_consistency", "bounded_norms", "no_degradation",
                             "no_collapse", "ndcg_floor", "beats_baseline"}
    # the example head is accepted (docs/adding-a-head.md): every check passes, and the run exits 0
    assert all(o == "pass" for o in outcomes.values()), outcomes
    assert proc.returncode == 0 and report["verdict"] == "pass", proc.stdout + proc.stderr
    assert "linear-residual" in (out / "summary.md").read_text()
