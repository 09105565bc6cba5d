"""The gate end to end: `harness run` on small real suites (MiniLM, cached embeddings), its exit codes,
reports, strict expected failures, baseline provenance, --require-gpu, and pytest's collection of suites."""
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent

SUITE = """\
version = 1
name = "tiny"
encoder = "minilm"
datasets = ["scifact"]
baselines_dir = "{baselines}"
[train]
datasets = ["scifact"]
epochs = 3
max_pairs = 1000
[checks.finite]
[checks.loss_properties]
max_examples = 100
[checks.bounded_norms]
[checks.beats_baseline]
encoder = "minilm"
permutations = 2000
[[candidates]]
name = "identity"
head = "identity"
expect_fail = {{ beats_baseline = "it is the baseline" }}
[[candidates]]
name = "asym-dot"
head = "asymmetric"
losses = {{ infonce_dot = {{ weight = 1.0, temperature = 1.0 }} }}
expect_fail = ["loss_properties", "bounded_norms", "beats_baseline"]
"""


@pytest.fixture()
def baselines(tmp_path):
    """A private copy of the stored MiniLM baselines (tests may corrupt it)."""
    target = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines" / "minilm", target / "minilm")
    return target


def suite_file(folder: Path, baselines: Path, text: str = SUITE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.toml"
    path.write_text(text.format(baselines=baselines))
    return path


def test_run_passes_when_every_failure_is_expected(tmp_path, baselines, data_dir, capsys):
    out = tmp_path / "report"
    code = main(["run", str(suite_file(tmp_path / "suites", baselines)), "--out", str(out), "--no-github-summary"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "report.json").read_text())
    outcomes = {c["name"]: {k: v["outcome"] for k, v in c["checks"].items()} for c in report["candidates"]}
    assert outcomes["identity"] == {"finite": "pass", "loss_properties": "n/a", "bounded_norms": "pass", "beats_baseline": "xfail"}
    assert outcomes["asym-dot"] == {"finite": "pass", "loss_properties": "xfail", "bounded_norms": "xfail", "beats_baseline": "xfail"}
    summary = (out / "summary.md").read_text()
    assert "Gate `tiny`: ✅ PASS" in summary and "Likely cause" in summary and "seed 002" in summary
    assert (out / "plots" / "asym-dot.png").stat().st_size > 10000 and (out / "plots" / "identity.png").is_file()
    assert (out / "runs" / "asym-dot" / "scifact" / "telemetry.json").is_file()  # one folder per training unit
    assert not list(out.rglob(".*tmp*")), "temporary files left behind"


def test_strict_xpass_and_unexpected_failure_turn_the_gate_red(tmp_path, baselines, data_dir, capsys):
    text = SUITE.replace('expect_fail = ["loss_properties", "bounded_norms", "beats_baseline"]', 'expect_fail = ["beats_baseline"]')
    text = text.replace('expect_fail = {{ beats_baseline = "it is the baseline" }}',
                        'expect_fail = {{ beats_baseline = "it is the baseline", finite = "pretend" }}')
    out = tmp_path / "report"
    code = main(["run", str(suite_file(tmp_path / "suites", baselines, text)), "--out", str(out), "--no-github-summary"])
    printed = capsys.readouterr().out
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    checks = {c["name"]: c["checks"] for c in report["candidates"]}
    assert checks["identity"]["finite"]["outcome"] == "xpass"
    assert "no longer catches this known failure" in checks["identity"]["finite"]["message"]
    assert checks["asym-dot"]["bounded_norms"]["outcome"] == "fail" and checks["asym-dot"]["loss_properties"]["outcome"] == "fail"
    assert report["verdict"] == "fail" and "XPASS" in printed
    assert "What turned the gate red" in (out / "summary.md").read_text()


def test_provenance_mismatch_stops_before_training(tmp_path, baselines, data_dir, capsys):
    path = baselines / "minilm" / "scifact-test.json"
    stored = json.loads(path.read_text())
    stored["provenance"]["max_length"] = 512
    path.write_text(json.dumps(stored))
    out = tmp_path / "report"
    code = main(["run", str(suite_file(tmp_path / "suites", baselines)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "'max_length'" in err and "512" in err and "256" in err and "harness baselines update --encoder minilm --dataset scifact" in err
    assert not out.exists(), "nothing may be written when nothing was compared"


def test_missing_baseline_names_the_command(tmp_path, data_dir, capsys):
    code = main(["run", str(suite_file(tmp_path / "suites", tmp_path / "empty")), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "no stored baseline" in err and "harness baselines update --encoder minilm" in err


def test_baselines_update_is_atomic_and_verifiable(tmp_path, data_dir, capsys):
    from harness import baselines as bl

    root = tmp_path / "b"
    assert main(["baselines", "update", "--encoder", "minilm", "--dataset", "scifact", "--baselines-dir", str(root)]) == 0
    fresh = json.loads((root / "minilm" / "scifact-test.json").read_text())
    shipped = json.loads((ROOT / "baselines" / "minilm" / "scifact-test.json").read_text())
    assert fresh["per_query_ndcg10"] == pytest.approx(shipped["per_query_ndcg10"], abs=1e-6)
    assert fresh["provenance"]["encoder_sha256"] == shipped["provenance"]["encoder_sha256"]
    assert main(["baselines", "verify", "--baselines-dir", str(root)]) == 0
    # all or nothing: a failure while computing the second dataset leaves the first untouched
    before = (root / "minilm" / "scifact-test.json").read_text()
    code = main(["baselines", "update", "--encoder", "minilm", "--dataset", "scifact,nosuchset", "--baselines-dir", str(root)])
    assert code == 2 and (root / "minilm" / "scifact-test.json").read_text() == before
    assert sorted(p.name for p in (root / "minilm").iterdir()) == ["scifact-test.json"]
    capsys.readouterr()
    with pytest.raises(bl.ProvenanceError, match="'dtype'"):
        b = bl.load(root, "minilm", "scifact", "test")
        bl.verify(b, {**b.provenance, "dtype": "bf16"})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_require_gpu_fails_loudly_without_cuda(tmp_path, baselines, capsys):
    code = main(["run", str(ROOT / "suites" / "gpu_suite.toml"), "--require-gpu", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--require-gpu: no CUDA device" in err and not (tmp_path / "r").exists()


def test_pytest_collects_suites_into_candidate_x_check_items(tmp_path, baselines, data_dir):
    path = suite_file(tmp_path / "suites", baselines)
    gpu = tmp_path / "suites" / "tinygpu.toml"
    gpu.write_text(path.read_text().replace('name = "tiny"', 'name = "tinygpu"\nrequires_gpu = true'))
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "HARNESS_DATA_DIR": str(data_dir)}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(path), str(gpu), "-p", "no:cacheprovider", "-q", "-rs",
                           f"--junitxml={junit}", "--rootdir", str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = {}
    for c in ET.parse(junit).getroot().iter("testcase"):
        kinds = [ch.get("type") if ch.tag == "skipped" else ch.tag for ch in c if ch.tag != "properties"]
        cases[f"{c.get('classname').split('.toml.')[0].rsplit('.', 1)[-1]}::{c.get('classname').rsplit('.', 1)[-1]}::{c.get('name')}"] = kinds
    assert len(cases) == 16  # 2 suites x 2 candidates x 4 checks
    xfailed = sorted(k for k, v in cases.items() if v == ["pytest.xfail"] and k.startswith("tiny::"))
    assert xfailed == ["tiny::asym-dot::beats_baseline", "tiny::asym-dot::bounded_norms", "tiny::asym-dot::loss_properties",
                       "tiny::identity::beats_baseline"]
    assert all(v == [] for k, v in cases.items() if k.startswith("tiny::") and k not in xfailed)  # passed
    gpu_items = [v for k, v in cases.items() if k.startswith("tinygpu::")]
    if not __import__("torch").cuda.is_available():
        assert all(v == ["pytest.skip"] for v in gpu_items), gpu_items
    if not __import__("torch").cuda.is_available():
        assert "needs a CUDA GPU" in proc.stdout
        proc = subprocess.run([sys.executable, "-m", "pytest", str(gpu), "-p", "no:cacheprovider", "-q", "--require-gpu",
                               "-k", "identity and finite", "--rootdir", str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 1 and "no CUDA device" in proc.stdout, proc.stdout


def test_an_interrupted_pytest_session_leaves_its_gate_out_folder_marked(tmp_path, baselines, data_dir):
    """`pytest SUITE --gate-out DIR` interrupted while a candidate trains: DIR/<suite> holds an INCOMPLETE marker
    saying so, and neither the previous session's report nor a partial one (it wrote the candidates gated so
    far as if they were the run, and kept an older report.json beside newer runs before that)."""
    import signal
    import time

    text = SUITE.replace("epochs = 3", 'epochs = 500\npatience = 0\nselect = "last"\ndev_fraction = 0.0')  # no early stop
    path = suite_file(tmp_path / "suites", baselines, text)
    folder = tmp_path / "out" / "tiny"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text('{"verdict": "pass"}')  # the previous session's
    env = {**os.environ, "HARNESS_DATA_DIR": str(data_dir)}
    # torch imports torch._dynamo lazily, at the first optimizer: a Ctrl-C inside that import made pytest itself
    # crash while formatting the traceback (a frame at line -1), before any session hook ran. Import it first.
    code = ("import signal, sys, pytest, torch._dynamo; signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"sys.exit(pytest.main([{str(path)!r}, '-k', 'asym-dot', '-p', 'no:cacheprovider', '-q', "
            f"'--gate-out', {str(tmp_path / 'out')!r}, '--rootdir', {str(tmp_path)!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (folder / "INCOMPLETE").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (folder / "INCOMPLETE").is_file(), "no marker before training"
        assert not (folder / "report.json").exists(), "the previous session's report sits beside this session's runs"
        time.sleep(2)  # into loading or training (the marker is written just before they start)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, out + err  # pytest's "interrupted"
    marker = (folder / "INCOMPLETE").read_text()
    assert marker.startswith("interrupted at ") and f"`pytest --gate-out {tmp_path / 'out'}`" in marker, marker
    assert not (folder / "report.json").exists() and not (folder / "summary.md").exists()


def test_a_pytest_session_stopped_by_x_writes_no_report(tmp_path, baselines, data_dir):
    """`pytest -x --gate-out DIR`: the first unexpected failure stops the session, and what ran is not the suite:
    DIR/<suite> says so in its marker instead of holding a report of the items that happened to run."""
    text = SUITE.replace('expect_fail = {{ beats_baseline = "it is the baseline" }}\n', "")  # identity now fails, at once
    path = suite_file(tmp_path / "suites", baselines, text)
    env = {**os.environ, "HARNESS_DATA_DIR": str(data_dir)}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(path), "-x", "-k", "identity", "-p", "no:cacheprovider", "-q",
                           "--gate-out", str(tmp_path / "out"), "--rootdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "stopping after 1 failures" in proc.stdout, proc.stdout + proc.stderr
    marker = (tmp_path / "out" / "tiny" / "INCOMPLETE").read_text()
    assert marker.startswith("stopped early (stopping after 1 failures) at "), marker
    assert not (tmp_path / "out" / "tiny" / "report.json").exists()


def test_suites_are_collected_only_when_asked(tmp_path, baselines):
    """A folder holding suites/ is not gated by a plain pytest run; --gate-suites (or naming the file) collects it."""
    suite_file(tmp_path / "suites", baselines)
    args = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)]
    plain = subprocess.run([*args, str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert "tiny.toml::" not in plain.stdout, plain.stdout
    asked = subprocess.run([*args, "--gate-suites", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert "tiny.toml::identity::finite" in asked.stdout, asked.stdout + asked.stderr


def test_workers_give_the_serial_run_s_numbers(tmp_path, baselines, data_dir, monkeypatch, capfd):
    """`harness run --workers 2` trains candidates x seeds in two processes; outcomes and numbers equal serial.
    Each worker says how its training goes, in lines naming candidate and seed (a CI log is never silent)."""
    monkeypatch.setenv("HARNESS_PROGRESS_INTERVAL", "0")  # a line per epoch; spawned workers inherit it
    text = SUITE.replace('datasets = ["scifact"]\nbaselines_dir', 'datasets = ["scifact"]\nseeds = [0, 1]\nbaselines_dir')
    path = suite_file(tmp_path / "suites", baselines, text)
    reports = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        assert main(["run", str(path), "--out", str(out), "--workers", str(workers), "--no-github-summary"]) == 0
        err = capfd.readouterr().err
        assert "training asym-dot (seed 1): done, " in err, err
        report = json.loads((out / "report.json").read_text())
        reports[workers] = {c["name"]: ({k: (v["outcome"], {s: x["measured"] for s, x in v["per_seed"].items()})
                                         for k, v in c["checks"].items()}, c["ndcg10_by_seed"]) for c in report["candidates"]}
        assert (out / "seed-1" / "runs" / "asym-dot" / "scifact" / "telemetry.json").is_file()
    assert reports[2] == reports[1]


def _alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/status").read_text().split("State:\t", 1)[-1].startswith("Z")
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux: read from /proc; zombies count as gone)."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid) and _alive(int(status.parent.name)):
            out.append(int(status.parent.name))
    return out


def test_an_interrupted_run_stops_its_workers(tmp_path, baselines, data_dir):
    """SIGTERM reaches only the parent of `harness run --workers 2` (e.g. a cancelled CI job): it must stop the
    workers too and exit 143 at once, not train on for minutes after saying "interrupted" (it did)."""
    import signal
    import time

    if not Path("/proc/self/status").is_file():
        pytest.skip("reads the worker processes from /proc")
    text = SUITE.replace("epochs = 3", "epochs = 500").replace('datasets = ["scifact"]\nbaselines_dir',
                                                               'datasets = ["scifact"]\nseeds = [0, 1]\nbaselines_dir')
    path = suite_file(tmp_path / "suites", baselines, text)
    env = {**os.environ, "HARNESS_PROGRESS_INTERVAL": "0", "HARNESS_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--candidate", "asym-dot", "--workers", "2",
                             "--out", str(tmp_path / "r"), "--no-github-summary"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stderr:  # both workers training
        seen += [line]
        if len({s for s in ("(seed 0)", "(seed 1)") for x in seen if x.startswith("training asym-dot " + s)}) == 2:
            break
    workers = _children(proc.pid)
    assert workers, "".join(seen)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert time.monotonic() - start < 30, "the run trained on after the interrupt"
    assert "interrupted: SIGTERM: the gate stopped before it finished" in err
    deadline = time.monotonic() + 10  # a terminated worker may take a moment to go
    while [p for p in workers if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], "worker processes outlived the interrupted run"
    assert (tmp_path / "r" / "INCOMPLETE").is_file()


def test_workers_auto_is_a_process_per_core_at_most_one_per_job(monkeypatch):
    """`--workers auto`: cores / threads per job on CPU, capped by the jobs; Ray keeps its own default."""
    from harness.fanout import resolve_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert resolve_workers("auto", "local", jobs=15, device="cpu") == 4
    assert resolve_workers("auto", "local", jobs=3, device="cpu") == 3
    assert resolve_workers("auto", "local", jobs=15, device="cpu", threads=2) == 2
    assert resolve_workers("auto", "local", jobs=15, device="cpu", threads=None) == 1  # a job on every core
    assert resolve_workers("auto", "ray", jobs=15, device="cpu") == 1  # Ray's instance: every core
    assert resolve_workers(3, "local", jobs=1, device="cpu") == 3
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert resolve_workers("auto", "local", jobs=15, device="cuda") == 4  # at most 4 per GPU
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    assert resolve_workers("auto", "local", jobs=15, device="cuda") == 8
    assert resolve_workers("auto", "local", jobs=15, device="cuda:1") == 4  # one GPU of the two
    assert resolve_workers("auto", "local", jobs=15, device="mps") == 4


def test_validate_warns_about_a_missing_regression_baseline(tmp_path, baselines, capsys):
    """An accepted candidate (no expected beats_baseline failure) without its regression baseline would fail
    no_regression in `harness run`: validate says so, with the command that stores it, and still exits 0."""
    text = SUITE + '[checks.no_regression]\n[[candidates]]\nname = "fresh"\nhead = "adapter"\n'
    path = suite_file(tmp_path / "suites", baselines, text)
    assert main(["validate", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: candidate 'fresh' has no regression baseline (" in out, out
    assert f"harness baselines update --suite {path} --candidate fresh" in out and "'identity' has" not in out, out
