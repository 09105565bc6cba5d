"""Training a suite's candidates x seeds outside this process, on an existing engine: a process pool or Ray.

``harness run --workers N`` (``backend="local"``) trains each (candidate, seed) in one of N spawned processes
(``concurrent.futures``; on a machine with several GPUs each job gets one, round robin, through
``CUDA_VISIBLE_DEVICES``). ``harness run --backend ray`` makes each (candidate, seed) a Ray task (one GPU each
where the cluster has GPUs, else one CPU), on a local Ray instance or, with ``--address``, on a running cluster.

Either way only training leaves this process: a job returns what the checks read (the run, the per-unit result,
the training error and seconds), ``adopt`` puts it into the parent's ``CandidateGate``, and the checks run in the
parent exactly as in a serial run, so the report is the serial run's (``tests/test_fanout.py``).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from harness.gate import CandidateGate, GateError

if TYPE_CHECKING:
    from harness.runner import SeededGate

BACKENDS = ("local", "ray")
# tiny heads leave a GPU mostly idle: 4 processes on one H100 gated the smoke suite's 30 heads in 97 s, the serial
# run 10 of them in 79 s (docs/performance.md); more per GPU was not measured
PER_GPU = 4
RAY_MISSING = "--backend ray needs ray: pip install 'retrieval-harness[ray]'"

Trained = tuple[Any, Any, str, float]  # run, result, train_error, train_seconds: what the checks read
Jobs = dict[tuple[str, int], "Future[Trained]"]  # (candidate, seed) -> its training, finishing elsewhere


def fans_out(backend: str, workers: int) -> bool:
    """Whether training leaves this process (otherwise each candidate trains on its first check, serially)."""
    return backend == "ray" or workers > 1


def resolve_workers(workers: int | str, backend: str, jobs: int, device: str | None = None, threads: int | None = 1) -> int:
    """``--workers auto``: a process per core this process may use, divided by the threads each job trains with
    (the suite's ``threads``, 1 by default); on an accelerator also at most ``PER_GPU`` per device (every GPU for
    ``cuda``, one for ``cuda:N``, ``mps`` and the like); never more than the jobs,
    never under 1. With ``--backend ray`` auto is Ray's own default: every core of the instance. A number is kept."""
    if workers != "auto":
        return int(workers)
    if backend == "ray":
        return 1
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    slots = cores // threads if threads else 1  # threads None: each job takes every core
    kind, _, index = (device or "").partition(":")
    if kind == "cuda" or (device is None and torch.cuda.is_available()):
        gpus = 1 if index else max(torch.cuda.device_count(), 1)  # "cuda:1" trains on that one GPU only
        slots = min(slots, PER_GPU * gpus)
    elif kind and kind != "cpu":  # one accelerator of another kind (mps, xpu): as one GPU
        slots = min(slots, PER_GPU)
    return max(1, min(slots, jobs))


def require(backend: str, workers: int = 1, address: str | None = None) -> None:
    """Refuse, in one line and before anything is written, a backend that cannot run as asked."""
    if backend not in BACKENDS:
        raise GateError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if address is not None and backend != "ray":
        raise GateError(f"--address {address} names a Ray cluster: add --backend ray")
    if backend == "ray":
        if address is not None and workers > 1:
            raise GateError("--workers sizes a Ray instance started here; on a cluster (--address) its resources decide "
                            "how many jobs run at once: drop --workers")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise GateError(RAY_MISSING) from None


@contextmanager
def training(gates: dict[str, SeededGate], backend: str = "local", workers: int = 1, device: str | None = None,
             address: str | None = None, before_jobs: Callable[[], None] | None = None) -> Iterator[Jobs]:
    """Start training every (candidate, seed) of ``gates`` elsewhere and yield ``{(candidate, seed): future}``;
    empty when nothing fans out (``backend="local"``, one worker). ``before_jobs`` runs once the pool or Ray is
    up and before any job is submitted (the caller marks its report folder incomplete there: an engine that
    cannot start leaves nothing behind). Leaving the block releases the pool or the Ray instance this started
    (a Ray instance already running in this process is left running)."""
    require(backend, workers, address)
    jobs = [(name, seed, cg) for name, sg in gates.items() for seed, cg in sg.gates.items()]
    ready = before_jobs or (lambda: None)
    if backend == "ray":
        with _ray(jobs, workers, device, address, ready) as futures:
            yield futures
    elif workers > 1:
        with _pool(jobs, workers, device, ready) as futures:
            yield futures
    else:
        yield {}


def adopt(cg: CandidateGate, job: Future[Trained]) -> None:
    """Wait for a job and give the parent's ``CandidateGate`` what it trained, as if it had trained it itself.
    Training errors are already inside (``train_error``, an ERROR outcome); a job that could not run at all (a
    worker that died, a Ray worker without the harness) stops the run in one line."""
    try:
        trained = job.result()
    except Exception as exc:
        cause = getattr(exc, "cause", None) or exc  # a Ray task error carries the worker's exception
        text = str(cause).strip().splitlines()
        raise GateError(f"training {cg.spec.name!r} (seed {cg.config.get('seed')}) could not run in its worker: "
                        f"{type(cause).__name__}: {text[-1] if text else ''}; is this harness installed where it ran?") from None
    cg.candidate.run, cg.candidate.result, cg.train_error, cg.train_seconds = trained
    cg._trained = True


def train_job(cg: CandidateGate, gpu: int | None = None) -> Trained:
    """In a worker: train one candidate on one seed (writing its run folder) and hand back what checks read."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from harness.files import one_line_warnings
    from harness.train import progress_mode

    cg.progress = "off" if progress_mode(cg.progress) == "off" else "lines"  # named lines: parallel bars would clash
    with one_line_warnings():  # as the harness command prints them, not with a file path and a source line
        cg.train()
    return cg.candidate.run, cg.candidate.result, cg.train_error, cg.train_seconds


@contextmanager
def _pool(jobs: list[tuple[str, int, CandidateGate]], workers: int, device: str | None,
          ready: Callable[[], None]) -> Iterator[Jobs]:
    """``workers`` spawned processes (spawn: no torch state forked); a job per (candidate, seed)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    wants_cuda = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
    n_gpus = torch.cuda.device_count() if wants_cuda else 0
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    finished = False
    try:
        ready()
        futures: Jobs = {}
        for name, seed, cg in jobs:
            gpu = (len(futures) % n_gpus) if n_gpus > 1 else None
            futures[(name, seed)] = pool.submit(train_job, cg, gpu)
        yield futures
        finished = True
    finally:  # on an error or an interrupt, jobs not yet started are dropped and running ones stopped
        if not finished:
            # Else the interpreter's exit joins the workers, which train on for minutes after "interrupted" (a
            # SIGTERM reaches the parent only). A stopped job leaves its run folder in the report folder that
            # the gate marks incomplete, and cache entries are written whole, under locks a dead process frees.
            terminate = getattr(pool, "terminate_workers", None)  # public from Python 3.14
            if terminate is not None:
                terminate()
            else:  # older Pythons have no public way to stop a pool's running workers
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
        pool.shutdown(wait=finished, cancel_futures=not finished)


@contextmanager
def _ray(jobs: list[tuple[str, int, CandidateGate]], workers: int, device: str | None, address: str | None,
         ready: Callable[[], None]) -> Iterator[Jobs]:
    """A Ray task per (candidate, seed). ``address=None`` starts a local instance (``workers`` CPUs when more
    than one, else every core); an address connects to a running cluster (``"auto"``, ``"ray://host:10001"``),
    whose workers need the harness installed and ``$HARNESS_*`` paths that exist there (they are passed on)."""
    import ray

    started = not ray.is_initialized()
    if started:
        import logging

        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if address is None:
            options["num_cpus"] = workers if workers > 1 else None
        else:  # a cluster's workers do not share this shell: pass the data, cache and baseline folders on
            options["runtime_env"] = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("HARNESS_")}}
        handlers = _signal_handlers()
        try:
            ray.init(address=address, **options)
        except Exception as exc:  # no cluster there, a refused connection, a malformed address: one line
            where = f"the Ray cluster at --address {address}" if address else "a local Ray instance"
            raise GateError(f"cannot start or reach {where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                            f"check `ray status` there, or drop --address to start one here") from None
        finally:  # ray.init makes SIGTERM a bare sys.exit(15): keep the command's (exit 143, report marked)
            _restore(handlers)
    try:
        gpus = 0 if (device or "").startswith("cpu") else int(ray.cluster_resources().get("GPU", 0))
        if (device or "").startswith("cuda") and not gpus:
            raise GateError(f"--device {device}: the Ray cluster has no GPU; drop --device or connect to one with --address")
        task = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=0)(train_job)
        ready()
        futures: Jobs = {(name, seed): task.remote(cg).future() for name, seed, cg in jobs}
        yield futures
    finally:  # disconnecting ends this driver's job: Ray stops its running tasks, on a cluster too
        if started:
            ray.shutdown()


def _signal_handlers() -> dict[int, Any]:
    """This process's Python handlers of SIGINT and SIGTERM (none outside the main thread: nothing to keep)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: h for s in (signal.SIGINT, signal.SIGTERM) if (h := signal.getsignal(s)) is not None}


def _restore(handlers: dict[int, Any]) -> None:
    import signal

    for s, handler in handlers.items():
        signal.signal(s, handler)
