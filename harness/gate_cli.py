"""``harness run`` (gate a suite) and ``harness baselines`` (store, show and verify frozen baselines)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from harness import cli, hookimpl

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def _errors():
    return cli.harness_errors()


def load_suite_file(path: str | Path):
    """``harness.suite.load_suite`` (which reports a folder, a missing file and one that is not UTF-8 itself),
    with an unreadable file reported as a ``SuiteError``."""
    from harness.suite import SuiteError, load_suite

    try:
        return load_suite(path)
    except PermissionError as exc:
        raise SuiteError(f"{path}: cannot read it ({exc.strerror}); check its permissions") from None


def cmd_run(args) -> int:
    from rich.text import Text

    from harness import report as rp
    from harness.runner import run_suite

    suite = None
    out_dir = Path(args.out) if args.out else None
    begun = False
    try:
        suite = load_suite_file(args.suite)
        out_dir = out_dir or Path("reports") / suite.name
        if args.require_gpu is False and suite.requires_gpu:
            cli.say("note:", "yellow", f"suite {suite.name!r} is a GPU suite; running it on this machine as asked "
                    f"(pass --require-gpu to refuse without CUDA)")

        def on_candidate(spec):
            nonlocal begun
            if not begun:  # the first write of this run is near: the folder now holds an incomplete run, marked
                rp.begin(out_dir, suite)
                begun = True
            if not args.json:
                cli.err.print(Text.assemble((f"candidate {spec.name}", "bold"), f" ({spec.head}, losses {', '.join(spec.losses) or 'none'})"),
                              highlight=False, soft_wrap=True)

        def on_outcome(name, o):
            style = rp.STYLE[o.outcome]
            cli.err.print(Text.assemble("  ", (f"{rp.SYMBOL[o.outcome]:>5}", style), f" {o.check} ({o.seconds:.1f} s)"),
                          highlight=False, soft_wrap=True)

        if args.candidate:
            for name in args.candidate:
                suite.candidate(name)  # an unknown name: exit 2 naming the candidates, before anything is written
        report = run_suite(
            suite, seed=args.seed, candidates=args.candidate, out_dir=out_dir, require_gpu_=args.require_gpu,
            data_dir=args.data_dir, device=args.device, progress=not args.no_progress,
            on_outcome=None if args.json else on_outcome, on_candidate=on_candidate, regenerate=args.regenerate,
            seeds=args.seeds, workers=args.workers, backend=args.backend, address=args.address,
        )
        if not begun:
            rp.begin(out_dir, suite)
            begun = True
        paths = rp.write(report, out_dir)
    except _errors() as exc:
        if begun:
            assert out_dir is not None  # begun only once out_dir is set
            rp.abort(out_dir, f"stopped by an error ({type(exc).__name__})", suite)
        cli.error(exc)
        return EXIT_ERROR
    except (KeyboardInterrupt, cli.Terminated) as exc:
        cli.ignore_signals()
        code, name = cli.interrupt_code(exc)
        if begun:
            assert out_dir is not None  # begun only once out_dir is set
            rp.abort(out_dir, f"interrupted by {name}", suite)
            where = f"{out_dir} holds an incomplete run, marked {out_dir / rp.MARKER}"
        else:
            where = "no candidate had started, nothing was written"
        cli.say("interrupted:", "bold red", f"{name}: the gate stopped before it finished; {where}; caches and baselines "
                f"are intact; run `harness run {args.suite}` again")
        return code
    if args.json:
        print(json.dumps(rp.to_dict(report), indent=1))
    else:
        cli.console.print(rp.table(report, cli.console.width))
        for c in report.candidates:
            for o in c.outcomes.values():
                if o.gating:
                    cli.say(c.name, "bold red", o.message, cli.console)
        for w in report.warnings:
            cli.say("warning:", "yellow", w)
        cli.say("", "", f"report: {paths['json']}  summary: {paths['markdown']}  plots: {out_dir / 'plots'}", cli.console)
    summary = os.environ.get("GITHUB_STEP_SUMMARY") if args.github_summary else None
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(paths["markdown"].read_text())
    return EXIT_PASS if report.passed else EXIT_FAIL


def cmd_baselines(args) -> int:
    from harness import baselines as bl

    root = Path(args.baselines_dir) if args.baselines_dir else bl.default_root()
    try:
        if args.action == "update" and (args.suite or args.candidate):
            return _accept(args)
        if args.action == "update":
            if not args.encoder or not args.dataset:
                cli.error("baselines update needs --encoder and --dataset (e.g. --encoder minilm --dataset scifact)")
                return EXIT_ERROR
            options = {"dtype": args.dtype, **({"device": args.device} if args.device else {})}
            done = bl.update(root, args.encoder, args.dataset, args.split or ["test"], args.data_dir, **options)
            for b in done:
                cli.say("", "", f"wrote {b.path}: {b.encoder} {b.dataset}/{b.split} NDCG@10 {b.ndcg10:.4f} ({b.n_queries} queries)",
                        cli.console)
            return EXIT_PASS
        if args.suite or args.candidate:
            cli.error(f"baselines {args.action} lists frozen-encoder baselines and takes no --suite or --candidate (a "
                      f"candidate's regression baseline is checked by `harness run` or `harness validate` on its suite)")
            return EXIT_ERROR
        paths = bl.stored(root)
        if args.encoder:
            args.encoder = [bl.safe_name(e) for e in args.encoder]
        if args.dataset:
            args.dataset = [bl.safe_name(d) for d in args.dataset]
        wanted = [(p.parent.name, *p.stem.rsplit("-", 1)) for p in paths if "-" in p.stem]
        if args.encoder:
            wanted = [w for w in wanted if w[0] in args.encoder]
        if args.dataset:
            wanted = [w for w in wanted if w[1] in args.dataset]
        if args.split:
            wanted = [w for w in wanted if w[2] in args.split]
        if not wanted:
            cli.say("", "", f"no stored baselines under {root} match; create them with `harness baselines update --encoder minilm "
                    f"--dataset scifact,nfcorpus`")
            return EXIT_ERROR if args.action == "verify" else EXIT_PASS
        from rich.markup import escape
        from rich.table import Table

        t = Table(title=escape(f"baselines in {root}"))
        for col in ("encoder", "dataset", "split", "NDCG@10", "queries", "harness", "provenance"):
            t.add_column(col)
        bad = 0
        for encoder, dataset, split in wanted:
            b = bl.load(root, encoder, dataset, split)
            status = "not checked"
            if args.action == "verify":
                try:
                    warnings = bl.verify(b, bl.current_provenance(b.encoder, b.dataset, split, args.data_dir), root)
                    status = "[green]matches[/]" + (" (older harness)" if warnings else "")
                except bl.ProvenanceError as exc:
                    bad += 1
                    status = "[bold red]MISMATCH[/]"
                    cli.error(exc)
            t.add_row(escape(encoder), escape(dataset), escape(split), f"{b.ndcg10:.4f}", str(b.n_queries), escape(str(b.provenance.get("harness_version"))), status)
        cli.console.print(t)
        return EXIT_ERROR if bad else EXIT_PASS
    except _errors() as exc:
        cli.error(exc)
        return EXIT_ERROR


def _accept(args) -> int:
    """``baselines update --suite S --candidate C``: gate C on its seeds; if accepted, store its regression baseline."""
    from harness.accept import accept

    if not (args.suite and args.candidate) or len(args.candidate) != 1:
        given, missing = ("--suite", "--candidate NAME (one candidate)") if args.suite else ("--candidate", "--suite FILE")
        cli.error(f"baselines update {given} needs {missing}, e.g. --suite suites/smoke.toml --candidate adapter")
        return EXIT_ERROR
    suite = load_suite_file(args.suite)
    result = accept(suite, args.candidate[0], seeds=args.seeds, data_dir=args.data_dir, device=args.device,
                    progress=not args.no_progress, baselines_dir=args.baselines_dir)
    if result.refused:
        for line in result.refused:
            cli.say("refused:", "bold red", line)
        cli.say("", "", f"candidate {args.candidate[0]!r} was not accepted (a check failed on seeds "
                f"{', '.join(map(str, result.seeds))}); no regression baseline was written", cli.console)
        return EXIT_FAIL
    scores = ", ".join(f"{d} {v:.4f}" for d, v in result.ndcg10.items())
    cli.say("", "", f"accepted {args.candidate[0]!r} on seeds {', '.join(map(str, result.seeds))} (NDCG@10 {scores}); "
            f"wrote {result.path}", cli.console)
    return EXIT_PASS


def cmd_validate(args) -> int:
    """Everything checked, nothing trained: the suite, its plugins, heads built at the encoder's width, baselines."""
    from harness.validate import validate

    try:
        suite = load_suite_file(args.suite)
        lines = validate(suite, data_dir=args.data_dir)
    except _errors() as exc:
        cli.error(exc)
        return EXIT_ERROR
    for line in lines:
        cli.say("", "", line, cli.console)
    n, k = len(suite.candidates), len(suite.checks)
    cli.say("ok:", "bold green", f"{args.suite} is valid: {n} candidate{'s' if n != 1 else ''} x {k} check{'s' if k != 1 else ''} on "
            f"seeds {', '.join(map(str, suite.seeds or [suite.seed]))}; nothing was trained", cli.console)
    return EXIT_PASS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="gate a suite: train each candidate, run its checks, exit 1 on any unexpected failure",
        description=("Train every candidate of a suite briefly, run its checks, compare with stored baselines and print a "
                     "candidate x check table. Writes report.json, summary.md and a telemetry plot per trained head "
                     "(plots/<candidate>-<dataset>.png, or plots/<candidate>.png for one pooled head) to --out. "
                     "Exit status: 0 gate passed, 1 gate failed (a FAIL, XPASS or ERROR), 2 the suite, a baseline, a "
                     "data file, the cache or the machine is wrong (nothing was compared; one line says which file and "
                     "what to do), 130 interrupted (SIGINT), 143 terminated (SIGTERM). The report folder holds the last "
                     "complete run, or an INCOMPLETE marker while a run is unfinished; never an older report beside "
                     "newer runs."),
        epilog="examples:\n  harness run suites/smoke.toml\n  harness run suites/smoke.toml --seeds 0,1,2 --candidate adapter,asym-dot\n"
               "  harness run suites/smoke.toml --workers auto         # candidates x seeds trained in a process per core\n"
               "  harness run suites/smoke.toml --backend ray --address auto   # a Ray task each, on a running cluster\n"
               "  pytest -n 2 --dist loadgroup suites/smoke.toml       # pytest-xdist: each candidate on one worker\n"
               "  harness validate suites/smoke.toml   # check everything, train nothing",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", help="suite file (suites/*.toml)")
    p.add_argument("--seed", type=int, help="one training seed for every candidate (overrides the suite's seeds)")
    p.add_argument("--seeds", type=_seeds, help="training seeds, comma-separated: each candidate is trained and judged on "
                   "each (overrides the suite's `seeds`; docs/gate.md: the seed rule)")
    p.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                   help="train candidates x seeds in N processes (one GPU each, round robin, where there are several); "
                        "auto = a process per core (at most 4 per GPU on CUDA), at most one per candidate x seed; with --backend "
                        "ray, the CPUs of the Ray instance started here (default 1: serial; with ray, every core). "
                        "Checks run in this process: the report is the serial run's")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="where training fans out: local = this machine's processes (--workers); ray = a Ray task per "
                        "candidate x seed (one GPU each where the cluster has GPUs, else one CPU), on a Ray instance started "
                        "here or the cluster at --address; needs pip install 'retrieval-harness[ray]' (default local)")
    p.add_argument("--address", metavar="ADDR",
                   help="with --backend ray: the running cluster to use, as ray.init(address=ADDR), e.g. auto or "
                        "ray://head:10001 (its workers need the harness and the $HARNESS_* folders; default: start one here)")
    p.add_argument("--regenerate", action="store_true",
                   help="rewrite accepted candidates' regression baselines from this run (no_regression still reports)")
    p.add_argument("--candidate", type=cli._csv, help="only these candidates (comma-separated)")
    p.add_argument("--out", help="report folder (default reports/<suite name>)")
    p.add_argument("--require-gpu", action="store_true", default=False,
                   help="fail (exit 2) unless a CUDA GPU is available, and train on it; never skips")
    p.add_argument("--device", help="torch device for training (default: the suite's, else cuda if available)")
    p.add_argument("--data-dir", help="folder holding BEIR datasets (default: $HARNESS_DATA_DIR)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress: neither bars (a terminal) nor the line every $HARNESS_PROGRESS_INTERVAL s (15) a log gets")
    p.add_argument("--github-summary", action=argparse_bool(), default=True,
                   help="append summary.md to $GITHUB_STEP_SUMMARY when it is set (default on; --no-github-summary)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "baselines", help="store, list and verify frozen-encoder baselines (mean + per-query NDCG@10 with provenance)",
        description=("update: evaluate the frozen encoder(s) and write <baselines-dir>/<encoder>/<dataset>-<split>.json "
                     "atomically (all or nothing); an encoder or dataset given as a path is stored under its folder's "
                     "name, always inside --baselines-dir. show: list stored baselines. verify: check that each still "
                     "matches the encoder weights, data files, max length, dtype and similarity. --encoder, --dataset and "
                     "--split narrow show and verify. Exit status: 0 ok, 1 update --suite refused the candidate (a "
                     "check failed; nothing written), 2 a mismatch or a bad baseline file (one line names the file), "
                     "130/143 interrupted."),
        epilog=("examples:\n  harness baselines update --encoder minilm --dataset scifact,nfcorpus\n"
                "  harness baselines update --suite suites/smoke.toml --candidate adapter   # an accepted head's regression baseline"),
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["update", "show", "verify"])
    p.add_argument("--suite", help="with --candidate: gate that candidate of this suite on its seeds and, if every check "
                   "passes, store its regression baseline (<baselines>/candidates/<suite>/<candidate>.json)")
    p.add_argument("--candidate", type=cli._csv, help="the candidate to accept (with --suite)")
    p.add_argument("--seeds", type=_seeds, help="seeds to accept on (default: the suite's)")
    p.add_argument("--no-progress", action="store_true", help="with --suite: no progress bars or lines while it trains")
    p.add_argument("--encoder", type=cli._csv, help="encoder name(s), comma-separated")
    p.add_argument("--dataset", type=cli._csv, help="dataset name(s), comma-separated")
    p.add_argument("--split", type=cli._csv, help="split(s), comma-separated (update: default test; show, verify: default all)")
    p.add_argument("--baselines-dir", help="baseline folder (default: with --suite its baselines_dir key, else "
                   "$HARNESS_BASELINES_DIR, else ../baselines beside the suite; without: $HARNESS_BASELINES_DIR, else "
                   "./baselines if it exists, else the harness's own)")
    p.add_argument("--data-dir", help="folder holding BEIR datasets (default: $HARNESS_DATA_DIR)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="encoder precision (part of the provenance)")
    p.add_argument("--device", help="torch device for encoding")
    p.set_defaults(func=cmd_baselines)


def _workers(text: str) -> int | str:
    import argparse

    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of processes, e.g. 2, or auto") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"{text!r}: expected between 1 and 256 processes")
    return n


def _seeds(text: str) -> list[int]:
    import argparse

    try:
        seeds = [int(v) for v in text.split(",")]  # not cli._csv: "0,,1" is a typo, not seeds 0 and 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or any(v < 0 for v in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct integers >= 0, e.g. 0,1,2")
    return seeds


def add_validate_parser(sub) -> None:
    p = sub.add_parser("validate", help="check a suite completely without training: keys, plugins, heads at real width, baselines",
                       description="Load the suite, build every candidate's head at the encoder's real width, run it forward on "
                                   "random vectors and every loss on its output (and backward), validate every training config and threshold, and load and verify every stored baseline "
                                   "its checks compare with. Nothing is trained. Exit status: 0 valid, 2 not (one line says "
                                   "which file, key or plugin, and what to do).",
                       epilog="example: harness validate suites/smoke.toml")
    p.add_argument("suite", help="suite file (suites/*.toml)")
    p.add_argument("--data-dir", help="folder holding BEIR datasets (default: $HARNESS_DATA_DIR)")
    p.set_defaults(func=cmd_validate)


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


@hookimpl
def register_commands(subparsers):
    add_parser(subparsers)
    add_validate_parser(subparsers)
