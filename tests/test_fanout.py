"""Fan-out on existing engines: `pytest -n 2 --dist loadgroup` over a suite's items (pytest-xdist) and
`harness run --backend ray` give the serial run's outcomes and numbers (docs/performance.md, "Fan-out")."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent

# two cheap candidates on two seeds: the pooled check (beats_baseline) needs both seeds' runs in one process
SUITE = """\
version = 1
name = "fan"
encoder = "minilm"
datasets = ["scifact"]
seeds = [0, 1]
baselines_dir = "{baselines}"
[train]
datasets = ["scifact"]
epochs = 2
max_pairs = 1000
[checks.finite]
[checks.loss_properties]
max_examples = 50
[checks.bounded_norms]
[checks.beats_baseline]
encoder = "minilm"
permutations = 2000
[[candidates]]
name = "identity"
head = "identity"
expect_fail = {{ beats_baseline = "it is the baseline" }}
[[candidates]]
name = "adapter"
head = "adapter"
losses = {{ infonce_cos = {{ weight = 1.0, temperature = 0.05 }} }}
"""


def numbers(report_json: Path) -> dict:
    """What must not change with the fan-out: every outcome, every measured value (pooled and per seed), the
    kept NDCG@10 of every seed, the seeds."""
    report = json.loads(report_json.read_text())
    return {"seeds": report["seeds"], "verdict": report["verdict"], "candidates": {
        c["name"]: ({k: (v["outcome"], v["measured"], {s: x["measured"] for s, x in v["per_seed"].items()})
                     for k, v in c["checks"].items()}, c["ndcg10_by_seed"]) for c in report["candidates"]}}


@pytest.fixture(scope="module")
def suite(tmp_path_factory, data_dir) -> Path:
    folder = tmp_path_factory.mktemp("fanout")
    shutil.copytree(ROOT / "baselines" / "minilm", folder / "baselines" / "minilm")
    (folder / "suites").mkdir()
    path = folder / "suites" / "fan.toml"
    path.write_text(SUITE.format(baselines=folder / "baselines"))
    return path


@pytest.fixture(scope="module")
def serial(suite) -> dict:
    """The serial run every fan-out is compared with."""
    out = suite.parent.parent / "serial"
    assert main(["run", str(suite), "--out", str(out), "--no-github-summary", "--no-progress"]) == 0
    return numbers(out / "report.json")


def test_pytest_xdist_loadgroup_trains_each_candidate_on_one_worker(suite, serial, tmp_path):
    """`pytest -n 2 --dist loadgroup SUITE`: a candidate's items (all its seeds) run on one worker, the controller
    writes one --gate-out report, and it holds the serial run's outcomes and numbers."""
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (pip install -e '.[test]')")
    stale = tmp_path / "fan" / "seed-7" / "runs" / "old" / "telemetry.json"  # an earlier session's run
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    gpu = suite.parent / "fangpu.toml"  # a GPU suite beside it: skipped here, so its folder must stay as it was
    gpu.write_text(suite.read_text().replace('name = "fan"', 'name = "fangpu"\nrequires_gpu = true'))
    kept = tmp_path / "fangpu" / "report.json"
    kept.parent.mkdir()
    kept.write_text("{}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(suite), *([str(gpu)] if not torch_cuda() else []), "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
                           "--gate-out", str(tmp_path), "--rootdir", str(suite.parent.parent)],
                          capture_output=True, text=True, env=env, cwd=suite.parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = re.findall(r"\[(gw\d+)\] \[ *\d+%\] (?:PASSED|XFAIL) \S*fan\.toml::([\w-]+)::\w+@fan\.\2", proc.stdout)
    assert len(ran) == 8, proc.stdout  # 2 candidates x 4 checks, each tagged with its candidate's group
    workers = {c: {w for w, name in ran if name == c} for c in ("identity", "adapter")}
    assert all(len(w) == 1 for w in workers.values()), workers
    assert "more than one xdist worker" not in proc.stdout
    assert numbers(tmp_path / "fan" / "report.json") == serial
    assert not stale.exists()  # the controller cleared the folder before the workers trained into it
    assert not (tmp_path / "fan" / "INCOMPLETE").exists()
    if not torch_cuda():
        assert kept.is_file() and not (tmp_path / "fangpu" / "INCOMPLETE").exists()  # nothing of it trained


def torch_cuda() -> bool:
    return __import__("torch").cuda.is_available()


def test_ray_backend_gives_the_serial_run_s_numbers(suite, serial, tmp_path):
    """`harness run --backend ray`: each (candidate, seed) trains as a task of a local Ray instance started (and
    stopped) by the run; the checks run in the parent, so the report is the serial one."""
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    out = tmp_path / "ray"
    assert main(["run", str(suite), "--out", str(out), "--backend", "ray", "--workers", "2", "--no-github-summary",
                 "--no-progress"]) == 0
    assert numbers(out / "report.json") == serial
    assert (out / "seed-1" / "runs" / "adapter" / "scifact" / "telemetry.json").is_file()  # written by a Ray worker
    assert not __import__("ray").is_initialized()  # the instance it started is gone


def test_the_ray_backend_keeps_the_command_s_signal_handlers():
    """ray.init installs its own SIGTERM handler (a bare sys.exit(15)): a cancelled CI job then exited 15, without
    "interrupted", its report folder unmarked. The backend keeps the handlers the command installed."""
    import signal

    from harness.cli import signals
    from harness.fanout import training

    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    with signals():
        mine = signal.getsignal(signal.SIGTERM)
        with training({}, backend="ray", workers=1) as futures:  # a local instance, no job
            assert futures == {}
            assert signal.getsignal(signal.SIGTERM) is mine
    assert not __import__("ray").is_initialized()


def test_backend_refusals_are_one_line_and_write_nothing(suite, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed: `import ray` raises ImportError
    out = tmp_path / "r"
    assert main(["run", str(suite), "--out", str(out), "--backend", "ray"]) == 2
    assert "--backend ray needs ray: pip install 'retrieval-harness[ray]'" in capsys.readouterr().err
    assert main(["run", str(suite), "--out", str(out), "--address", "auto"]) == 2
    assert "add --backend ray" in capsys.readouterr().err
    assert not out.exists()


def test_an_unreachable_ray_cluster_is_one_line_and_writes_nothing(suite, tmp_path, monkeypatch, capsys):
    """ray.init failing (no cluster at --address) stops the run before its report folder is marked incomplete."""
    import types

    def init(**kwargs):
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}\nmore detail")

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False, init=init))
    out = tmp_path / "r"
    assert main(["run", str(suite), "--out", str(out), "--backend", "ray", "--address", "ray://nowhere:10001"]) == 2
    err = capsys.readouterr().err
    assert "cannot start or reach the Ray cluster at --address ray://nowhere:10001: ConnectionError: Failed to connect" in err
    assert "more detail" not in err and not out.exists()


def _train_jobs() -> list[int]:
    """Live processes running a Ray training task (Ray titles its workers ``ray::train_job``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::train_job"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_an_interrupted_ray_run_cancels_its_tasks_on_the_cluster(suite, tmp_path):
    """SIGTERM to `harness run --backend ray --address ...` (a cancelled CI job): the run exits 143 and says so
    (it exited 15, silently: ray.init's handler), and the cluster, which outlives the run, stops its tasks.
    It starts a Ray cluster on this machine and ends with `ray stop --force`, which stops every Ray process here:
    run it where no other Ray work runs (it is skipped when it sees another run's training tasks)."""
    import signal
    import socket
    import tempfile
    import time

    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    if not Path("/proc/self/cmdline").is_file():
        pytest.skip("reads the Ray worker processes from /proc")
    text = suite.read_text().replace("epochs = 2", "epochs = 500")
    path = tmp_path / "long.toml"
    path.write_text(text)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a throwaway cluster on this machine: no token to hand on
    if _train_jobs():
        pytest.skip("another Ray run's training tasks are on this machine: this test counts them")
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    f"--temp-dir={temp}", "--disable-usage-stats"], check=True, capture_output=True, env=env)
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--candidate", "adapter",
                                 "--backend", "ray", "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "r"),
                                 "--no-github-summary", "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 180
        while len(_train_jobs()) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert len(_train_jobs()) == 2, proc.communicate(timeout=60) if proc.poll() is not None else "no task started"
        time.sleep(3)  # into training, past loading
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert "interrupted: SIGTERM: the gate stopped before it finished" in err
        assert (tmp_path / "r" / "INCOMPLETE").is_file()
        deadline = time.monotonic() + 20  # a cancelled task's worker takes a moment to go
        while _train_jobs() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _train_jobs(), "the cluster trained on after the interrupted run"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=env)  # every Ray process of this machine
        shutil.rmtree(temp, ignore_errors=True)
