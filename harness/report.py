"""Gate reports: a rich table for the terminal, ``report.json``, ``summary.md`` (a CI job summary or PR
comment) and one PNG of each candidate's telemetry over epochs (matplotlib, Agg backend).

Everything is written to temporary files first and moved into place, so a report folder never holds a
half-written file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from harness import __version__
from harness.files import write_atomic

SYMBOL = {"pass": "PASS", "n/a": "n/a", "fail": "FAIL", "xfail": "XFAIL", "xpass": "XPASS", "error": "ERROR"}
STYLE = {"pass": "green", "n/a": "dim", "fail": "bold red", "xfail": "yellow", "xpass": "bold red", "error": "bold red"}
EMOJI = {"pass": "✅ pass", "n/a": "➖ n/a", "fail": "❌ **FAIL**", "xfail": "☑️ xfail", "xpass": "❌ **XPASS**", "error": "💥 **ERROR**"}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    try:  # numpy scalars
        return _clean(value.item())
    except AttributeError:
        return str(value)


# -- data ------------------------------------------------------------------------------------------
def epoch_summary(record) -> dict:
    return {
        "epoch": record.epoch, "loss": record.loss, "q_norm": record.q_norm, "d_norm": record.d_norm,
        "pos_sim": record.pos_sim, "neg_sim": record.neg_sim, "grad_norm": record.grad_norm, "residual": record.residual,
        "rankme": record.rankme, "alignment": record.alignment, "uniformity": record.uniformity, "ndcg10": record.ndcg10,
        "top10_overlap": record.top10_overlap, "seconds": record.seconds,
    }


def to_dict(report) -> dict:
    suite = report.suite
    out = {
        "format": 1,
        "harness_version": __version__,
        "verdict": "pass" if report.passed else "fail",
        "suite": {"name": suite.name, "path": str(suite.path), "version": suite.version, "encoder": suite.encoder,
                  "datasets": suite.datasets, "eval_split": suite.eval_split, "requires_gpu": suite.requires_gpu},
        "seed": report.seed,
        "device": report.device,
        "started": report.started,
        "seconds": report.seconds,
        "counts": report.counts,
        "warnings": report.warnings,
        "baselines": report.baselines,
        "candidates": [],
    }
    for c in report.candidates:
        entry = {
            "name": c.name, "description": c.spec.description, "passed": c.passed, "config": c.config,
            "expect_fail": c.spec.expect_fail, "train_error": c.train_error, "train_seconds": c.train_seconds,
            "run_dir": c.run_dir, "checks": {},
        }
        for name, o in c.outcomes.items():
            r = o.result
            entry["checks"][name] = {
                "outcome": o.outcome, "gating": o.gating, "message": o.message, "seconds": o.seconds,
                "passed": None if r is None else r.passed, "measured": None if r is None else r.measured,
                "bound": None if r is None else r.bound, "epoch": None if r is None else r.epoch,
                "cause": "" if r is None else r.cause, "fix": "" if r is None else r.fix,
                "details": {} if r is None else r.details, "expected_reason": o.expected_reason, "error": o.error,
            }
        if c.run is not None:
            entry["similarity"] = c.run.similarity
            entry["baseline_ndcg10"] = c.run.baseline_ndcg10
            entry["baseline_rankme"] = c.run.baseline_rankme
            entry["epochs"] = [epoch_summary(e) for e in c.run.epochs]
            entry["telemetry"] = c.run.telemetry_path
        out["candidates"].append(entry)
    return _clean(out)


# -- terminal ----------------------------------------------------------------------------------------
def table(report):
    from rich.table import Table

    checks = list(dict.fromkeys(n for c in report.candidates for n in c.outcomes))
    verdict = "[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]"
    t = Table(title=f"gate {report.suite.name} · {report.suite.encoder} · seed {report.seed} · {verdict}")
    t.add_column("candidate", style="bold")
    for name in checks:
        t.add_column(name, justify="center")
    t.add_column("verdict", justify="center")
    for c in report.candidates:
        cells = []
        for name in checks:
            o = c.outcomes.get(name)
            cells.append("" if o is None else f"[{STYLE[o.outcome]}]{SYMBOL[o.outcome]}[/]")
        cells.append("[green]ok[/]" if c.passed else "[bold red]red[/]")
        t.add_row(c.name, *cells)
    return t


# -- markdown --------------------------------------------------------------------------------------
def _md_escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown(report, plots: dict[str, str] | None = None) -> str:
    suite = report.suite
    checks = list(dict.fromkeys(n for c in report.candidates for n in c.outcomes))
    verdict = "✅ PASS" if report.passed else "❌ FAIL"
    counts = ", ".join(f"{v} {k}" for k, v in sorted(report.counts.items()))
    lines = [
        f"## Gate `{suite.name}`: {verdict}",
        "",
        f"Encoder **{suite.encoder}**, datasets {', '.join(suite.datasets)} ({suite.eval_split}), seed {report.seed}, "
        f"device {report.device}, {report.seconds:.0f} s, harness {__version__}. Outcomes: {counts}.",
        "",
        "`xfail` = a seed's known failure, declared in the suite and caught (green); `FAIL`/`XPASS`/`ERROR` turn the gate red.",
        "",
        "| candidate | " + " | ".join(checks) + " | verdict |",
        "|---|" + "---|" * (len(checks) + 1),
    ]
    for c in report.candidates:
        cells = [EMOJI[c.outcomes[n].outcome] if n in c.outcomes else "" for n in checks]
        lines.append(f"| `{c.name}` | " + " | ".join(cells) + f" | {'ok' if c.passed else '**red**'} |")
    lines.append("")

    gating = [(c, o) for c in report.candidates for o in c.outcomes.values() if o.gating]
    if gating:
        lines += ["### ❌ What turned the gate red", ""]
        for c, o in gating:
            lines.append(f"- **{c.name}** · `{o.check}` ({o.outcome}): {_md_escape(o.message)}")
        lines.append("")
    caught = [(c, o) for c in report.candidates for o in c.outcomes.values() if o.outcome == "xfail"]
    if caught:
        lines += ["### Known failures caught (expected)", ""]
        for c, o in caught:
            lines.append(f"- **{c.name}** · `{o.check}`: {_md_escape(o.result.message)}")
        lines.append("")

    lines += ["### NDCG@10 (last epoch vs the frozen encoder)", ""]
    datasets = list(suite.datasets)
    lines.append("| candidate | " + " | ".join(datasets) + " | mean | beats baseline (p) |")
    lines.append("|---|" + "---|" * (len(datasets) + 2))
    for c in report.candidates:
        if c.run is None:
            lines.append(f"| `{c.name}` | " + " | ".join("—" for _ in datasets) + " | — | training failed |")
            continue
        last = c.run.last_epoch
        cells = []
        for d in datasets:
            v, b = last.ndcg10.get(d), c.run.baseline_ndcg10.get(d)
            cells.append("—" if v is None else f"{v:.4f} ({v - b:+.4f})" if b is not None else f"{v:.4f}")
        m = sum(last.ndcg10.values()) / len(last.ndcg10) if last.ndcg10 else float("nan")
        bb = c.outcomes.get("beats_baseline")
        if bb is not None and bb.result is not None and "datasets" in bb.result.details:
            avg = bb.result.details["datasets"]["average"]
            beat = f"{'yes' if avg['beats'] else 'no'} (diff {avg['diff']:+.4f}, p={avg['p']:.3g})"
        else:
            beat = "—"
        lines.append(f"| `{c.name}` | " + " | ".join(cells) + f" | {m:.4f} | {beat} |")
    lines.append("")
    if report.warnings:
        lines += ["### Warnings", ""] + [f"- {_md_escape(w)}" for w in report.warnings] + [""]
    if plots:
        lines += ["### Telemetry plots", ""] + [f"- `{c}`: `{p}`" for c, p in plots.items()] + [""]
    return "\n".join(lines) + "\n"


# -- plots -----------------------------------------------------------------------------------------
def plot_candidate(c, path: Path) -> Path | None:
    """Loss, norms, similarities, NDCG@10, residual size / top-10 overlap and RankMe over epochs."""
    if c.run is None or not c.run.epochs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = c.run
    ep = [e.epoch for e in run.epochs]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    status = ", ".join(f"{n}: {o.outcome}" for n, o in c.outcomes.items() if o.outcome != "pass")
    fig.suptitle(f"{c.name} ({run.config.get('head')}, {run.similarity}) — {status or 'all checks pass'}", fontsize=10)

    ax = axes[0, 0]
    keys = sorted({k for e in run.epochs for k in e.loss})
    for k in keys:
        ax.plot(ep, [e.loss.get(k, float("nan")) for e in run.epochs], marker="o", label=k)
    ax.set_title("loss on the probe batch (unweighted parts)")
    if keys:
        ax.legend(fontsize=7)
        if all(v > 0 for e in run.epochs for v in e.loss.values() if v == v):
            ax.set_yscale("log")

    ax = axes[0, 1]
    ax.plot(ep, [e.q_norm.get("mean", float("nan")) for e in run.epochs], marker="o", label="query norm")
    ax.plot(ep, [e.d_norm.get("mean", float("nan")) for e in run.epochs], marker="o", label="document norm")
    ax.set_title("mean norm of scored vectors")
    ax.legend(fontsize=7)

    ax = axes[0, 2]
    ax.plot(ep, [e.pos_sim for e in run.epochs], marker="o", label="positive")
    ax.plot(ep, [e.neg_sim for e in run.epochs], marker="o", label="negative")
    ax.set_title("similarity the loss uses")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    for d in sorted({k for e in run.epochs for k in e.ndcg10}):
        line, = ax.plot(ep, [e.ndcg10.get(d, float("nan")) for e in run.epochs], marker="o", label=d)
        if d in run.baseline_ndcg10:
            ax.axhline(run.baseline_ndcg10[d], color=line.get_color(), linestyle="--", linewidth=1)
    ax.set_title("eval NDCG@10 (dashed: frozen encoder)")
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    if any(e.residual for e in run.epochs):
        ax.plot([e.epoch for e in run.epochs if e.residual], [e.residual.get("correction_rel", float("nan")) for e in run.epochs if e.residual],
                marker="o", label="correction / input norm")
        ax.set_yscale("log")
        ax.set_title("residual correction size")
        ax.legend(fontsize=7)
    else:
        for d in sorted({k for e in run.epochs for k in e.top10_overlap}):
            ax.plot(ep, [e.top10_overlap.get(d, float("nan")) for e in run.epochs], marker="o", label=d)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("top-10 overlap with the frozen encoder")
        ax.legend(fontsize=7)

    ax = axes[1, 2]
    ax.plot(ep, [e.rankme for e in run.epochs], marker="o", label="RankMe")
    if run.baseline_rankme == run.baseline_rankme:
        ax.axhline(run.baseline_rankme, color="gray", linestyle="--", linewidth=1, label="frozen encoder")
    ax.set_title("effective rank (RankMe, worse side)")
    ax.legend(fontsize=7)

    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.set_xticks(ep)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def write(report, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``summary.md`` and ``plots/<candidate>.png``; returns their paths."""
    out_dir = Path(out_dir)
    plots = {}
    for c in report.candidates:
        p = plot_candidate(c, out_dir / "plots" / f"{c.name}.png")
        if p is not None:
            plots[c.name] = str(p.relative_to(out_dir))
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "summary.md"}
    write_atomic(paths["json"], (json.dumps(to_dict(report), indent=1, allow_nan=False) + "\n").encode())
    write_atomic(paths["markdown"], markdown(report, plots).encode())
    paths.update({f"plot:{k}": out_dir / v for k, v in plots.items()})
    return paths
