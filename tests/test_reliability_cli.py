"""Reliability at the command line (docs/reliability.md, cases 5-9): one line naming the file (and line or
key) and what to do, exit 2 for bad input, no traceback, no rich markup in messages, signals exit 130/143 with
caches, baselines and report folders intact."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_reliability_cache import FakeEncoder, fake_plugin, make_tiny  # noqa: F401  (shared test helpers)

from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent
STORED = ROOT / "baselines" / "minilm" / "scifact-test.json"


@pytest.fixture
def fake_registry(monkeypatch):
    import harness.registry as hp

    monkeypatch.setattr(hp, "_registry", hp.build_registry((fake_plugin(),)))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- exit codes are documented -------------------------------------------------------------------------------
def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit status" in out and "130" in out and "143" in out and "2    bad input" in out and "docs/reliability.md" in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "130 interrupted (SIGINT), 143 terminated (SIGTERM)" in " ".join(capsys.readouterr().out.split())


# -- case 5: baselines -----------------------------------------------------------------------------------------
def test_baselines_update_with_paths_writes_only_under_baselines_dir(tmp_path, cache_dir, minilm, capsys):
    tiny = make_tiny(tmp_path / "data" / "tiny")
    model_dir = Path(minilm.model_ref)
    data_before = sorted(p.name for p in (tmp_path / "data").rglob("*"))
    model_before = sorted(p.name for p in model_dir.parent.rglob("*"))
    bdir = tmp_path / "bl"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a relative default (./baselines) must not be used either
    try:
        rc = main(["baselines", "update", "--encoder", str(model_dir), "--dataset", str(tiny.path.resolve()),
                   "--baselines-dir", str(bdir), "--device", "cpu"])
    finally:
        os.chdir(cwd)
    assert rc == 0, capsys.readouterr().err
    assert sorted(bdir.rglob("*.json")) == [bdir / model_dir.name / "tiny-test.json"]
    assert sorted(p.name for p in (tmp_path / "data").rglob("*")) == data_before
    assert sorted(p.name for p in model_dir.parent.rglob("*")) == model_before
    assert not (tmp_path / "baselines").exists()
    capsys.readouterr()
    assert main(["baselines", "verify", "--baselines-dir", str(bdir)]) == 0
    assert "matches" in capsys.readouterr().out


def test_baseline_names_are_sanitised():
    from harness.baselines import baseline_path

    assert baseline_path("bl", "/models/x/all-MiniLM", "/data/beir/scifact/", "test") == Path("bl/all-MiniLM/scifact-test.json")
    assert baseline_path("bl", "sentence-transformers/all-MiniLM-L6-v2", "../../etc", "test") == \
        Path("bl/sentence-transformers--all-MiniLM-L6-v2/etc-test.json")
    assert baseline_path("bl", "minilm", "scifact", "test") == Path("bl/minilm/scifact-test.json")  # stored ones unchanged


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[1, 2]", "a JSON list, not a baseline object"),
        ("add-key", "unknown key(s) 'extra' (known: format, encoder"),
        ("bad-type", "key 'ndcg10' must be a number, not str"),
        ("{\"format\": 1,", ":1: not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_baseline_file_is_named(tmp_path, capsys, content, problem):
    bdir = tmp_path / "bl"
    path = bdir / "minilm" / "scifact-test.json"
    path.parent.mkdir(parents=True)
    if content == "add-key":
        content = json.dumps({**json.loads(STORED.read_text()), "extra": 1})
    elif content == "bad-type":
        content = json.dumps({**json.loads(STORED.read_text()), "ndcg10": "0.6"})
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["baselines", "show", "--baselines-dir", str(bdir)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {path}") and problem in line and "harness baselines update --encoder minilm" in line, line


# -- case 6: raw tracebacks become messages --------------------------------------------------------------------------
def test_non_utf8_suite_file(tmp_path, capsys):
    suite = tmp_path / "latin1.toml"
    suite.write_bytes(b'version = 1\nname = "x"\n# caf\xe9 au lait\nencoder = "minilm"\n')
    assert main(["run", str(suite)]) == 2
    assert one_error_line(capsys) == f"error: {suite}:3: not UTF-8 text (byte 0xe9 at column 6); save the file as UTF-8"


def test_suite_path_that_is_a_folder(tmp_path, capsys):
    for command in ("run", "validate"):
        assert main([command, str(tmp_path)]) == 2
        assert one_error_line(capsys) == f"error: {tmp_path}: a folder, not a suite file; give a suites/*.toml file"
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert one_error_line(capsys).startswith(f"error: {tmp_path / 'nope.toml'}: suite file not found")


def _pickled_model(folder: Path, marker: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 16}))

    class Payload:
        def __reduce__(self):  # what an attacker's pickle does: run code on load (here: create a file)
            return (Path.touch, (marker,))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    return folder


def test_pickled_weights_are_refused_never_loaded(tmp_path, cache_dir, capsys):
    from harness.encoders import EncoderError, TransformerEncoder

    marker = tmp_path / "pickle-ran"
    model = _pickled_model(tmp_path / "model", marker)
    tiny = make_tiny(tmp_path / "tiny")
    assert main(["eval", "--encoder", str(model), "--dataset", str(tiny.path), "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert line == (f"error: {model / 'pytorch_model.bin'}: pickled weights are refused (loading a pickle can run arbitrary "
                    f"code); convert them to model.safetensors in a trusted environment (transformers: "
                    f"AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)) or use a folder "
                    f"that has model.safetensors")
    with pytest.raises(EncoderError, match="pickled weights are refused"):
        TransformerEncoder(model, device="cpu").encode(["x"])
    assert not marker.exists()


# -- case 7: messages are never parsed as markup ------------------------------------------------------------------
def test_double_brackets_survive_in_messages(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text('version = 1\nname = "s"\nencoder = "minilm"\ndatasets = ["scifact"]\n[checks.finite]\n')
    assert main(["run", str(suite)]) == 2
    line = one_error_line(capsys)
    assert "[[candidates]]" in line and line.startswith(f"error: {suite}: key 'candidates'"), line


def test_closing_tag_in_a_name_does_not_crash(tmp_path, capsys):
    assert main(["eval", "--encoder", "minilm", "--dataset", "no[/x]such[bold]"]) == 2
    assert "unknown dataset 'no[/x]such[bold]'" in one_error_line(capsys)
    bdir = tmp_path / "b[/x]"
    (bdir / "minilm").mkdir(parents=True)
    shutil.copy(STORED, bdir / "minilm" / "scifact-test.json")
    assert main(["baselines", "show", "--baselines-dir", str(bdir)]) == 0
    assert "b[/x]" in capsys.readouterr().out.replace("\n", "")


def test_markup_in_say_warnings_and_report_tables(capsys):
    import warnings

    from rich.console import Console

    from harness import cli
    from harness.files import HarnessWarning

    cli.error("no candidates; add a [[candidates]] table, [/x] [bold]not bold[/bold]")
    assert capsys.readouterr().err == "error: no candidates; add a [[candidates]] table, [/x] [bold]not bold[/bold]\n"
    with warnings.catch_warnings():
        warnings.showwarning = cli._show_warning
        warnings.warn("cache [/x] entry", HarnessWarning)
    assert capsys.readouterr().err == "warning: cache [/x] entry\n"

    from harness.gate import CandidateReport, GateReport, Outcome
    from harness.report import table
    from harness.suite import CandidateSpec, Suite

    spec = CandidateSpec(name="c[/x]", head="identity", losses={})
    suite = Suite(path=Path("s.toml"), version=1, name="s[/x]", encoder="minilm", datasets=["scifact"], candidates=[spec], checks={})
    report = GateReport(suite, 0, [CandidateReport("c[/x]", spec, {}, {"odd[/x]": Outcome("odd[/x]", "pass")})], "now", 0.0, "cpu")
    console = Console(record=True, width=200)
    console.print(table(report))
    text = console.export_text()
    assert "c[/x]" in text and "odd[/x]" in text and "s[/x]" in text


@pytest.mark.parametrize("width", [80, 100])
def test_a_wide_gate_table_is_split_so_no_name_is_folded(width):
    """The GPU suite's 11 candidates x 11 checks in a CI log: names were folded into pieces ("identit" / "y",
    "loss_pr" / "opertie" / "s"); now the candidates are split over tables that fit, each naming its share."""
    from rich.console import Console

    from harness.gate import CandidateReport, GateReport, Outcome
    from harness.report import table
    from harness.suite import CandidateSpec, Suite

    names = ["adapter", "identity", "asym-dot", "asym-dot-seed002", "asym-cos", "respred-seed004", "respred-as-described",
             "respred-fixed", "isopred", "isopred-seed004", "barlow"]
    checks = ["finite", "loss_properties", "similarity_consistency", "bounded_norms", "nonzero_residuals", "no_degradation",
              "no_collapse", "rerank_depth", "changes_ranking", "no_regression", "beats_baseline"]
    specs = [CandidateSpec(name=n, head="identity", losses={}) for n in names]
    suite = Suite(path=Path("gpu_suite.toml"), version=1, name="gpu_suite", encoder="mpnet", datasets=["scifact"],
                  candidates=specs, checks={})
    candidates = [CandidateReport(n, spec, {}, {c: Outcome(c, "xfail") for c in checks}) for n, spec in zip(names, specs)]
    console = Console(record=True, width=width)
    console.print(table(GateReport(suite, 0, candidates, "now", 0.0, "cpu"), width))
    text = console.export_text()
    words = set(text.replace("│", " ").replace("┃", " ").split())
    assert set(names) <= words and set(checks) <= words, text
    assert max(map(len, text.splitlines())) <= width
    assert "candidates 1-" in text and f"of {len(names)}" in text
    narrow = Console(record=True, width=200)
    narrow.print(table(GateReport(suite, 0, candidates[:3], "now", 0.0, "cpu"), 200))
    assert "candidates 1-" not in narrow.export_text()  # one table when it fits


def test_a_worker_process_prints_a_harness_warning_as_one_line(capsys):
    """`--workers` processes are not run by the harness command: without this their warnings showed a file path
    and a source line (seen with a cache lock wait in a 2-worker run)."""
    import warnings

    from harness.cache import CacheWarning
    from harness.files import one_line_warnings

    before = warnings.showwarning
    with one_line_warnings():
        warnings.simplefilter("always")
        warnings.warn("entry.lock: waiting for process 7, which is computing entry.safetensors (2590 vectors)", CacheWarning)
    assert capsys.readouterr().err == "warning: entry.lock: waiting for process 7, which is computing entry.safetensors (2590 vectors)\n"
    assert warnings.showwarning is before


# -- case 8: SIGINT / SIGTERM during harness run ------------------------------------------------------------------
RUNNER = '''
import signal, sys, time

# A job started in the background without job control (`cmd &` in a script, as some CI runners do) inherits an
# ignored SIGINT, and Python keeps ignoring it; a terminal's Ctrl-C is what this test sends, so take it as one.
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
import harness.gate as gate
import harness.runner as runner
import harness.gate_cli as gc
from harness.cache import EmbeddingCache
from harness.evaluate import embed_side
from harness.data import BeirDataset
from harness.suite import CandidateSpec, Suite

FAKE

suite_path, mode, out, tiny = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
suite = Suite(path=suite_path, version=1, name="sig", encoder="fake", datasets=["tiny"], candidates=[], checks={})
gc.load_suite_file = lambda path: suite


def fake_run_suite(suite, out_dir=None, on_candidate=None, **kw):
    on_candidate(CandidateSpec(name="new", head="identity", losses={}))
    run = Path(out_dir) / "runs" / "new"
    run.mkdir(parents=True, exist_ok=True)
    (run / "telemetry.json").write_text("{}")
    if mode == "finish":
        return gate.GateReport(suite, 0, [], "now", 0.0, "cpu")
    print("READY", flush=True)
    # interrupted while encoding a cache entry (holding its lock)
    embed_side(FakeEncoder(delay=120), BeirDataset("tiny", tiny), "test", "query", EmbeddingCache())


runner.run_suite = fake_run_suite
from harness.cli import main
sys.exit(main(["run", str(suite_path), "--out", out, "--no-github-summary"]))
'''


def _digest(folder: Path) -> dict:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def stale_run(tmp_path, cache_dir):
    """A report folder holding an older complete run, a warm cache and a baselines folder."""
    out = tmp_path / "reports" / "sig"
    (out / "runs" / "old").mkdir(parents=True)
    (out / "plots").mkdir()
    (out / "report.json").write_text('{"verdict": "pass"}')
    (out / "summary.md").write_text("old summary")
    (out / "runs" / "old" / "telemetry.json").write_text("{}")
    (out / "runs" / "old" / "head.safetensors").write_bytes(b"x")
    (out / "runs" / "old" / "scifact").mkdir()  # one folder per training unit
    (out / "runs" / "old" / "scifact" / "telemetry.json").write_text("{}")
    (out / "seed-1" / "runs" / "old" / "nfcorpus").mkdir(parents=True)  # multi-seed runs
    (out / "seed-1" / "runs" / "old" / "nfcorpus" / "head_last.safetensors").write_bytes(b"x")
    (out / "plots" / "old.png").write_bytes(b"png")
    (out / "notes.txt").write_text("the user's own file")
    tiny = make_tiny(tmp_path / "tiny")
    from harness.cache import EmbeddingCache
    from harness.evaluate import embed_side

    embed_side(FakeEncoder(), tiny, "test", "doc", EmbeddingCache())
    bl = tmp_path / "bl" / "minilm"
    bl.mkdir(parents=True)
    shutil.copy(STORED, bl / "scifact-test.json")
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.replace("FAKE", textwrap.dedent(__import__("test_reliability_cache").FAKE_ENCODER)))
    return out, tiny, script


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_during_run_exits_with_one_line_and_leaves_a_marked_folder(tmp_path, cache_dir, stale_run, sig, code, name):
    out, tiny, script = stale_run
    before_cache, before_bl = _digest(cache_dir / "embeddings"), _digest(tmp_path / "bl")
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "suite.toml"), "interrupt", str(out), str(tiny.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "READY"
    import time

    time.sleep(0.5)  # inside the encoder, holding the cache entry's lock
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("candidate ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"interrupted: {name}: the gate stopped before it finished; {out} holds an incomplete run")
    assert "caches and baselines are intact" in lines[0]
    # the report folder: marked incomplete, no older report beside the new run, the user's file kept
    marker = out / "INCOMPLETE"
    assert marker.is_file() and f"interrupted by {name}" in marker.read_text()
    assert not (out / "report.json").exists() and not (out / "summary.md").exists()
    assert not (out / "runs" / "old").exists() and not (out / "plots").exists() and not (out / "seed-1").exists()
    assert (out / "runs" / "new" / "telemetry.json").is_file() and (out / "notes.txt").read_text() == "the user's own file"
    # caches and baselines intact: old entries unchanged, nothing half-written, the entry's lock free again
    after = _digest(cache_dir / "embeddings")
    assert {k: v for k, v in after.items() if k.endswith(".safetensors")} == \
        {k: v for k, v in before_cache.items() if k.endswith(".safetensors")}
    assert not [k for k in after if ".tmp" in k]
    assert _digest(tmp_path / "bl") == before_bl
    from harness.cache import EmbeddingCache
    from harness.evaluate import embed_side

    assert not embed_side(FakeEncoder(), tiny, "test", "query", EmbeddingCache()).cache_hit  # lock free: no wait


def test_completed_run_replaces_the_older_report_as_a_set(tmp_path, cache_dir, stale_run):
    out, tiny, script = stale_run
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "suite.toml"), "finish", str(out), str(tiny.path)],
                          capture_output=True, text=True, env={**os.environ, "HARNESS_CACHE_DIR": str(cache_dir)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "INCOMPLETE").exists()
    assert json.loads((out / "report.json").read_text())["suite"]["name"] == "sig"
    assert "sig" in (out / "summary.md").read_text()
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["new"] and (out / "notes.txt").exists()
    assert not (out / "seed-1").exists()


# -- case 9: thresholds -------------------------------------------------------------------------------------------------
def _ctx():
    from harness.suite import _Ctx

    return _Ctx(Path("suite.toml"))


@pytest.mark.parametrize(
    "check, name, value, problem",
    [
        ("beats_baseline", "alpha", float("nan"), "must be a finite number, got nan"),
        ("beats_baseline", "alpha", float("inf"), "must be a finite number, got inf"),
        ("beats_baseline", "alpha", 1.5, "is a probability and must lie strictly between 0 and 1, got 1.5"),
        ("beats_baseline", "alpha", 0, "is a probability and must lie strictly between 0 and 1, got 0"),
        ("beats_baseline", "power", 1.0, "is a probability and must lie strictly between 0 and 1, got 1.0"),
        ("beats_baseline", "margin", float("-inf"), "must be a finite number, got -inf"),
        ("beats_baseline", "permutations", 0, "must be >= 1, got 0"),
        ("beats_baseline", "permutations", 100.5, "must be an integer, got 100.5"),
        ("bounded_norms", "max_norm", float("inf"), "must be a finite number, got inf"),
        ("similarity_consistency", "min_agreement", 1.2, "is a fraction and must lie in [0, 1], got 1.2"),
        ("loss_properties", "max_examples", -3, "must be >= 1, got -3"),
        ("no_degradation", "max_rel_drop", -0.1, "is a fraction and must lie in [0, 1]"),
    ],
)
def test_bad_thresholds_name_file_and_key(check, name, value, problem):
    from harness.registry import components
    from harness.suite import SuiteError, _check_thresholds

    with pytest.raises(SuiteError) as info:
        _check_thresholds(_ctx(), f"checks.{check}", check, {name: value}, components("checks"))
    assert str(info.value).startswith(f"suite.toml: key 'checks.{check}.{name}': {problem}")


def test_good_thresholds_pass():
    from harness.registry import components
    from harness.suite import _check_thresholds

    checks = components("checks")
    assert _check_thresholds(_ctx(), "checks.beats_baseline", "beats_baseline",
                             {"alpha": 0.01, "margin": -0.01, "permutations": 1000}, checks)["alpha"] == 0.01
    assert _check_thresholds(_ctx(), "checks.bounded_norms", "bounded_norms", {"max_norm": 1e6}, checks)


def test_nan_threshold_in_a_suite_file(tmp_path, capsys):
    text = (ROOT / "suites" / "smoke.toml").read_text()
    assert "alpha = 0.05" in text
    suite = tmp_path / "smoke.toml"
    suite.write_text(text.replace("alpha = 0.05", "alpha = nan", 1))
    assert main(["run", str(suite)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {suite}: key 'checks.beats_baseline.alpha': must be a finite number, got nan"), line


def test_interrupt_in_any_command_is_one_line_and_handlers_are_restored(tmp_path, cache_dir, fake_registry, monkeypatch, capsys):
    import test_reliability_cache as rc

    def interrupted(self, texts, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(rc.FakeEncoder, "encode", interrupted)
    tiny = make_tiny(tmp_path / "tiny")
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    assert main(["eval", "--encoder", "fake", "--dataset", str(tiny.path)]) == 130
    assert one_error_line(capsys).startswith("interrupted: SIGINT: `harness eval` stopped before it finished;")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not list(cache_dir.rglob("*.safetensors")) and not list(cache_dir.rglob("*.tmp*"))


def test_sigterm_during_eval_exits_143(tmp_path, cache_dir):
    tiny = make_tiny(tmp_path / "tiny")
    script = tmp_path / "eval.py"
    script.write_text(__import__("test_reliability_cache").FAKE_ENCODER + textwrap.dedent(f"""
        import sys, types
        import harness.registry as hp
        from harness import hookimpl
        class Slow(FakeEncoder):
            def encode(self, texts, **kw):
                print("READY", flush=True)  # inside the command: its handlers are installed
                time.sleep(120)

        module = types.ModuleType("slow")
        module.register_encoders = hookimpl(lambda register: register("slow", Slow))
        hp._registry = hp.build_registry((module,))
        from harness.cli import main
        sys.exit(main(["eval", "--encoder", "slow", "--dataset", {str(tiny.path)!r}]))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HARNESS_CACHE_DIR": str(cache_dir)})
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["interrupted: SIGTERM: `harness eval` stopped before it finished; caches and "
                                           "baselines are only ever replaced whole, so they are intact; run the command again"]


def test_baselines_show_narrows_by_split_and_refuses_suite_flags(capsys):
    """`baselines show --split dev` listed the test baselines (the flag was ignored); `--suite` was ignored too;
    `update --candidate` without `--suite` said "--suite needs --candidate", blaming the flag that was given."""
    root = Path(__file__).resolve().parent.parent / "baselines"
    assert main(["baselines", "show", "--baselines-dir", str(root), "--split", "dev"]) == 0
    out = "".join(capsys.readouterr())
    assert "no stored baselines" in out and "│ scifact" not in out, out
    assert main(["baselines", "show", "--baselines-dir", str(root), "--split", "test", "--encoder", "minilm"]) == 0
    assert "│ scifact" in capsys.readouterr().out
    assert main(["baselines", "verify", "--suite", "suites/smoke.toml"]) == 2
    assert one_error_line(capsys).startswith("error: baselines verify lists frozen-encoder baselines and takes no --suite")
    assert main(["baselines", "update", "--candidate", "adapter"]) == 2
    assert one_error_line(capsys).startswith("error: baselines update --candidate needs --suite FILE")
