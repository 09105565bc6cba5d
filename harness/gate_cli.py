"""``harness run`` (gate a suite) and ``harness baselines`` (store, show and verify frozen baselines)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from harness import cli

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def _errors():
    from harness.baselines import BaselineError
    from harness.gate import GateError
    from harness.suite import SuiteError

    return (SuiteError, BaselineError, GateError)


def cmd_run(args) -> int:
    from harness import report as rp
    from harness.gate import run_suite
    from harness.suite import load_suite

    try:
        suite = load_suite(args.suite)
        out_dir = Path(args.out or Path("reports") / suite.name)
        if args.require_gpu is False and suite.requires_gpu:
            cli.err.print(f"[yellow]note:[/] suite {suite.name!r} is a GPU suite; running it on this machine as asked "
                          f"(pass --require-gpu to refuse without CUDA)", highlight=False, soft_wrap=True)

        def on_candidate(spec):
            cli.err.print(f"[bold]candidate {spec.name}[/] ({spec.head}, losses {', '.join(spec.losses) or 'none'})", highlight=False, soft_wrap=True)

        def on_outcome(name, o):
            style = rp.STYLE[o.outcome]
            cli.err.print(f"  [{style}]{rp.SYMBOL[o.outcome]:>5}[/] {o.check} ({o.seconds:.1f} s)", highlight=False, soft_wrap=True)

        report = run_suite(
            suite, seed=args.seed, candidates=args.candidate, out_dir=out_dir, require_gpu_=args.require_gpu,
            data_dir=args.data_dir, device=args.device, progress=not args.no_progress and sys.stderr.isatty(),
            on_outcome=None if args.json else on_outcome, on_candidate=None if args.json else on_candidate,
        )
    except _errors() as exc:
        cli.err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_ERROR
    paths = rp.write(report, out_dir)
    if args.json:
        print(json.dumps(rp.to_dict(report), indent=1))
    else:
        cli.console.print(rp.table(report))
        for c in report.candidates:
            for o in c.outcomes.values():
                if o.gating:
                    cli.console.print(f"[bold red]{c.name}[/] {o.message}", highlight=False, soft_wrap=True)
        for w in report.warnings:
            cli.err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
        cli.console.print(f"report: {paths['json']}  summary: {paths['markdown']}  plots: {out_dir / 'plots'}", highlight=False, soft_wrap=True)
    summary = os.environ.get("GITHUB_STEP_SUMMARY") if args.github_summary else None
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(paths["markdown"].read_text())
    return EXIT_PASS if report.passed else EXIT_FAIL


def cmd_baselines(args) -> int:
    from harness import baselines as bl

    root = Path(args.baselines_dir) if args.baselines_dir else bl.default_root()
    try:
        if args.action == "update":
            if not args.encoder or not args.dataset:
                cli.err.print("[bold red]error:[/] baselines update needs --encoder and --dataset", highlight=False, soft_wrap=True)
                return EXIT_ERROR
            options = {"dtype": args.dtype, **({"device": args.device} if args.device else {})}
            done = bl.update(root, args.encoder, args.dataset, args.split, args.data_dir, **options)
            for b in done:
                cli.console.print(f"wrote {b.path}: {b.encoder} {b.dataset}/{b.split} NDCG@10 {b.ndcg10:.4f} ({b.n_queries} queries)",
                                  highlight=False, soft_wrap=True)
            return EXIT_PASS
        paths = bl.stored(root)
        wanted = [(p.parent.name, *p.stem.rsplit("-", 1)) for p in paths]
        if args.encoder:
            wanted = [w for w in wanted if w[0] in args.encoder]
        if args.dataset:
            wanted = [w for w in wanted if w[1] in args.dataset]
        if not wanted:
            cli.err.print(f"no stored baselines under {root} match; create them with `harness baselines update --encoder minilm "
                          f"--dataset scifact,nfcorpus`", highlight=False, soft_wrap=True)
            return EXIT_ERROR if args.action == "verify" else EXIT_PASS
        from rich.table import Table

        t = Table(title=f"baselines in {root}")
        for col in ("encoder", "dataset", "split", "NDCG@10", "queries", "harness", "provenance"):
            t.add_column(col)
        bad = 0
        for encoder, dataset, split in wanted:
            b = bl.load(root, encoder, dataset, split)
            status = "not checked"
            if args.action == "verify":
                try:
                    warnings = bl.verify(b, bl.current_provenance(encoder, dataset, split, args.data_dir), root)
                    status = "[green]matches[/]" + (" (older harness)" if warnings else "")
                except bl.ProvenanceError as exc:
                    bad += 1
                    status = "[bold red]MISMATCH[/]"
                    cli.err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            t.add_row(encoder, dataset, split, f"{b.ndcg10:.4f}", str(b.n_queries), str(b.provenance.get("harness_version")), status)
        cli.console.print(t)
        return EXIT_ERROR if bad else EXIT_PASS
    except _errors() as exc:
        cli.err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_ERROR


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="gate a suite: train each candidate, run its checks, exit 1 on any unexpected failure",
        description=("Train every candidate of a suite briefly, run its checks, compare with stored baselines and print a "
                     "candidate x check table. Writes report.json, summary.md and plots/<candidate>.png to --out. "
                     "Exit status: 0 gate passed, 1 gate failed (a FAIL, XPASS or ERROR), 2 the suite, a baseline or "
                     "the machine is wrong (nothing was compared)."),
        epilog="example: harness run suites/smoke.toml --seed 1",
    )
    p.add_argument("suite", help="suite file (suites/*.toml)")
    p.add_argument("--seed", type=int, help="training seed for every candidate (overrides the suite's)")
    p.add_argument("--candidate", type=cli._csv, help="only these candidates (comma-separated)")
    p.add_argument("--out", help="report folder (default reports/<suite name>)")
    p.add_argument("--require-gpu", action="store_true", default=False,
                   help="fail (exit 2) unless a CUDA GPU is available, and train on it; never skips")
    p.add_argument("--device", help="torch device for training (default: the suite's, else cuda if available)")
    p.add_argument("--data-dir", help="folder holding BEIR datasets (default: $HARNESS_DATA_DIR)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--github-summary", action=argparse_bool(), default=True,
                   help="append summary.md to $GITHUB_STEP_SUMMARY when it is set (default on; --no-github-summary)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "baselines", help="store, list and verify frozen-encoder baselines (mean + per-query NDCG@10 with provenance)",
        description=("update: evaluate the frozen encoder(s) and write baselines/<encoder>/<dataset>-<split>.json atomically "
                     "(all or nothing). show: list stored baselines. verify: check that each still matches the encoder "
                     "weights, data files, max length, dtype and similarity (exit 2 on a mismatch)."),
        epilog="example: harness baselines update --encoder minilm --dataset scifact,nfcorpus",
    )
    p.add_argument("action", choices=["update", "show", "verify"])
    p.add_argument("--encoder", type=cli._csv, help="encoder name(s), comma-separated")
    p.add_argument("--dataset", type=cli._csv, help="dataset name(s), comma-separated")
    p.add_argument("--split", type=cli._csv, default=["test"], help="split(s), comma-separated (default test)")
    p.add_argument("--baselines-dir", help="baseline folder (default ./baselines or $HARNESS_BASELINES_DIR)")
    p.add_argument("--data-dir", help="folder holding BEIR datasets (default: $HARNESS_DATA_DIR)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="encoder precision (part of the provenance)")
    p.add_argument("--device", help="torch device for encoding")
    p.set_defaults(func=cmd_baselines)


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


cli.EXTENSIONS.append(add_parser)
