"""Gate reports: a rich table for the terminal, ``report.json``, ``summary.md`` (a CI job summary or PR
comment) and one PNG of each candidate's telemetry over epochs (matplotlib, Agg backend).

Everything is written to temporary files first and moved into place, so a report folder never holds a
half-written file. A report folder holds one run, as a set: ``begin`` (called just before the first
candidate of a new run writes anything) puts an ``INCOMPLETE`` marker in the folder and removes the
previous run's ``report.json``, ``summary.md``, plots and ``runs/`` files; ``write`` removes the marker
last. So a folder holds either the last complete run (no marker) or a clearly marked incomplete one
(interrupted, or still running), never an older report beside newer runs.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from harness import __version__
from harness.files import write_atomic

MARKER = "INCOMPLETE"
RUN_FILES = ("telemetry.json", "head.safetensors", "head_last.safetensors")  # what harness.train writes per run folder
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
        "top10_overlap": record.top10_overlap, "rerank_ndcg10": record.rerank_ndcg10, "dev_ndcg10": record.dev_ndcg10,
        "seconds": record.seconds,
    }


def training_summary(result) -> dict:
    """Per unit: how it was trained (mode, split sizes, lr tried and chosen, the selected epoch, the dev curve)."""
    out = {}
    for unit, run in result.units.items():
        proto = {k: v for k, v in run.protocol.items() if k != "dev_ids"}
        out[unit] = {"protocol": proto, "selected_epoch": run.selected_epoch.epoch, "stopped": run.stopped,
                     "epochs": [epoch_summary(e) for e in run.epochs], "telemetry": run.telemetry_path}
    return out


def seed_spread(c) -> dict:
    """Selected-epoch NDCG@10 per dataset on every seed, with min, max and mean (the spread of the gated number)."""
    runs = {s: cand.run for s, cand in (getattr(c, "seeds", None) or {}).items() if cand.run is not None}
    if not runs and c.run is not None:
        runs = {None: c.run}
    spread: dict[Any, dict[str, Any]] = {}
    for s, run in runs.items():
        for d, v in run.selected_epoch.ndcg10.items():
            spread.setdefault(d, {"by_seed": {}, "baseline": run.baseline_ndcg10.get(d)})["by_seed"][str(s)] = v
    for d, entry in spread.items():
        vals = list(entry["by_seed"].values())
        entry.update(min=min(vals), max=max(vals), mean=sum(vals) / len(vals))
    return spread


def to_dict(report) -> dict:
    suite = report.suite
    out = {
        "format": 1,
        "harness_version": __version__,
        "verdict": "pass" if report.passed else "fail",
        "suite": {"name": suite.name, "path": str(suite.path), "version": suite.version, "encoder": suite.encoder,
                  "datasets": suite.datasets, "eval_split": suite.eval_split, "requires_gpu": suite.requires_gpu},
        "seed": report.seed,
        "seeds": list(getattr(report, "seeds", None) or [report.seed]),
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
                "headline": "" if r is None else r.headline,
                "details": {} if r is None else r.details, "expected_reason": o.expected_reason, "error": o.error,
                "note": getattr(o, "note", ""),
                "per_seed": {str(sd): {"outcome": x.outcome, "measured": None if x.result is None else x.result.measured,
                                       "message": x.message, "note": x.note}
                             for sd, x in (getattr(c, "per_seed", {}) or {}).get(name, {}).items()},
            }
        entry["ndcg10_by_seed"] = seed_spread(c)
        seeds = getattr(c, "seeds", None) or {}
        if seeds:
            entry["training"] = {str(sd): training_summary(cand.result) for sd, cand in seeds.items() if cand.result is not None}
        elif getattr(c, "result", None) is not None:
            entry["training"] = {str(report.seed): training_summary(c.result)}
        if c.run is not None:
            entry["similarity"] = c.run.similarity
            entry["baseline_ndcg10"] = c.run.baseline_ndcg10
            entry["baseline_rankme"] = c.run.baseline_rankme
            entry["epochs"] = [epoch_summary(e) for e in c.run.epochs]
            entry["telemetry"] = c.run.telemetry_path
        out["candidates"].append(entry)
    return _clean(out)


# -- terminal ----------------------------------------------------------------------------------------
def table(report, width: int | None = None):
    """Checks down, candidates across (a suite has more checks than candidates), cells folded, never cut. When
    the candidates do not fit ``width`` columns (a CI log's 80, say), they are split over several tables, each
    with the check names, so no name is folded into pieces."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    checks = list(dict.fromkeys(n for c in report.candidates for n in c.outcomes))
    verdict = "[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]"
    seeds = list(getattr(report, "seeds", None) or [report.seed])
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    title = escape(f"gate {report.suite.name} · {report.suite.encoder} · {seed_text} · ") + verdict
    groups = _fit(report.candidates, checks, width)

    def one(candidates, part: str) -> Table:
        t = Table(title=title + escape(part))
        t.add_column("check", style="bold", overflow="fold")
        for c in candidates:
            t.add_column(escape(c.name), justify="center", overflow="fold")
        for name in checks:
            cells = []
            for c in candidates:
                o = c.outcomes.get(name)
                cells.append("" if o is None else f"[{STYLE[o.outcome]}]{SYMBOL[o.outcome]}[/]")
            t.add_row(escape(name), *cells)
        t.add_row("[bold]verdict[/]", *["[green]ok[/]" if c.passed else "[bold red]red[/]" for c in candidates])
        return t

    if len(groups) == 1:
        return one(groups[0], "")
    n, first = len(report.candidates), 1
    tables = []
    for group in groups:
        tables.append(one(group, f" · candidates {first}-{first + len(group) - 1} of {n}"))
        first += len(group)
    return Group(*tables)


def _fit(candidates: list, checks: list[str], width: int | None) -> list[list]:
    """Candidates in consecutive groups whose table is at most ``width`` columns wide (one group if None)."""
    if not width:
        return [list(candidates)]
    cell = max(len(SYMBOL[k]) for k in SYMBOL)
    used = max([len("verdict"), *map(len, checks)]) + 4  # border, padding, text, padding (and the closing border)
    groups: list[list] = [[]]
    total = used
    for c in candidates:
        need = max(len(c.name), cell) + 3
        if groups[-1] and total + need > width:
            groups.append([])
            total = used
        groups[-1].append(c)
        total += need
    return groups


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
        f"Encoder **{suite.encoder}**, datasets {', '.join(suite.datasets)} ({suite.eval_split}), "
        f"seed{'s' if len(getattr(report, 'seeds', None) or [report.seed]) > 1 else ''} "
        f"{', '.join(map(str, getattr(report, 'seeds', None) or [report.seed]))}, "
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

    lines += ["### NDCG@10 of the selected head (chosen on dev) vs the frozen encoder", "",
              "Mean over seeds (range over seeds); `beats baseline` is judged on per-query NDCG@10 averaged over seeds.", ""]
    datasets = list(suite.datasets)
    lines.append("| candidate | " + " | ".join(datasets) + " | mean | beats baseline (p) |")
    lines.append("|---|" + "---|" * (len(datasets) + 2))
    for c in report.candidates:
        if c.run is None:
            lines.append(f"| `{c.name}` | " + " | ".join("—" for _ in datasets) + " | — | training failed |")
            continue
        spread = seed_spread(c)
        cells, means = [], []
        for d in datasets:
            e = spread.get(d)
            if e is None:
                cells.append("—")
                continue
            b = e["baseline"]
            rng = f" [{e['min']:.4f}–{e['max']:.4f}]" if len(e["by_seed"]) > 1 else ""
            cells.append(f"{e['mean']:.4f} ({e['mean'] - b:+.4f}){rng}" if b is not None else f"{e['mean']:.4f}{rng}")
            means.append(e["mean"])
        m = sum(means) / len(means) if means else float("nan")
        bb = c.outcomes.get("beats_baseline")
        beat = (bb.result.headline if bb is not None and bb.result is not None else "") or "—"  # the check's own words
        lines.append(f"| `{c.name}` | " + " | ".join(cells) + f" | {m:.4f} | {beat} |")
    lines.append("")
    lines += ["### How each head was trained", ""]
    for c in report.candidates:
        lines.append(f"- **{c.name}**: {_md_escape(protocol_line(c))}")
    lines.append("")
    if report.warnings:
        lines += ["### Warnings", ""] + [f"- {_md_escape(w)}" for w in report.warnings] + [""]
    if plots:
        lines += ["### Telemetry plots", ""] + [f"- `{c}`: `{p}`" for c, p in plots.items()] + [""]
    return "\n".join(lines) + "\n"


def protocol_line(c) -> str:
    """One line: the mode and, per seed and unit, the lr and epoch the dev split chose and the split sizes."""
    seeds = getattr(c, "seeds", None) or {}
    results = {sd: cand.result for sd, cand in seeds.items() if cand.result is not None}
    if not results and getattr(c, "result", None) is not None:
        results = {None: c.result}
    if not results:
        return "not trained"
    parts = []
    mode = next(iter(results.values())).mode
    for sd, result in results.items():
        units = []
        for unit, run in result.units.items():
            p = run.protocol
            split = "; ".join(f"{d} {v['train_queries']} train / {v['dev_queries']} dev queries" for d, v in p.get("split", {}).items())
            stop = " (stopped: non-finite)" if run.stopped else ""
            dev = run.selected_epoch.dev_ndcg10
            dev_text = f", dev NDCG@10 {sum(dev.values()) / len(dev):.4f}" if dev else ""
            units.append(f"{unit}: lr {p.get('lr', 0):g}, epoch {run.selected_epoch.epoch} of {run.epochs[-1].epoch}{dev_text}{stop}"
                         f" [{split}]")
        parts.append((f"seed {sd}: " if sd is not None else "") + "; ".join(units))
    p0 = next(iter(next(iter(results.values())).units.values())).protocol
    head = (f"{mode}, select {p0.get('select')}, lr grid {', '.join(f'{x:g}' for x in p0.get('lr_grid', []))}, "
            f"{p0.get('hard_negatives')} hard negative(s) from the frozen top {p0.get('negative_depth')}, positives "
            f"{p0.get('positives')}, patience {p0.get('patience')}. ")
    return head + " | ".join(parts)


# -- plots -----------------------------------------------------------------------------------------
def plot_candidate(c, path: Path) -> Path | None:
    """Loss, norms, similarities, NDCG@10, residual size / top-10 overlap and RankMe over epochs."""
    run = getattr(c, "plot_run", None) or c.run
    if run is None or not run.epochs:
        return None
    try:
        import matplotlib
    except ImportError:  # plots are a convenience: a machine without matplotlib still gets the report
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ep = [e.epoch for e in run.epochs]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    status = ", ".join(f"{n}: {o.outcome}" for n, o in c.outcomes.items() if o.outcome != "pass")
    unit = getattr(c, "plot_unit", None)
    where = f" · {unit} head" if unit else ""
    fig.suptitle(f"{c.name}{where} ({run.config.get('head')}, {run.similarity}) — {status or 'all checks pass'}", fontsize=10)

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
        line, = ax.plot(ep, [e.ndcg10.get(d, float("nan")) for e in run.epochs], marker="o", label=f"{d} test")
        if d in run.baseline_ndcg10:
            ax.axhline(run.baseline_ndcg10[d], color=line.get_color(), linestyle="--", linewidth=1)
    for d in sorted({k for e in run.epochs for k in e.dev_ndcg10}):
        ax.plot(ep, [e.dev_ndcg10.get(d, float("nan")) for e in run.epochs], marker=".", linestyle=":", label=f"{d} dev")
    if run.selected is not None:
        ax.axvline(run.selected, color="gray", linestyle=":", linewidth=1)
    ax.set_title("NDCG@10 (dashed: frozen; dotted line: selected epoch)")
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # not a tick per epoch: text layout is most of a plot's cost
        ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.07, top=0.92, wspace=0.22, hspace=0.32)  # tight_layout draws twice
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _marker_text(state: str, suite=None, by: str = "harness run") -> bytes:
    what = f" of suite {suite.name!r} ({suite.path})" if suite is not None else ""
    again = f"`{by} {suite.path}`" if suite is not None else "the run"
    return (f"{state}: this folder holds an unfinished `{by}`{what}, not a report; "
            f"run {again} again for a complete one.\n").encode()


def begin(out_dir: str | Path, suite=None, by: str = "harness run") -> Path:
    """Mark ``out_dir`` INCOMPLETE, then remove the previous run's report, plots and run files (only files the
    harness writes; anything else in the folder is left alone). Returns the marker's path."""
    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_atomic(marker, _marker_text(f"started {stamp} (pid {os.getpid()})", suite, by))
    for name in ("report.json", "summary.md"):
        (out_dir / name).unlink(missing_ok=True)
    plots = out_dir / "plots"
    if plots.is_dir():
        for png in plots.glob("*.png"):
            png.unlink(missing_ok=True)
        _rmdir_if_empty(plots)
    for runs in [out_dir / "runs", *sorted(out_dir.glob("seed-*"))]:  # runs/<candidate>[/<unit>]/, seed-<n>/runs/...
        if runs.is_dir() and not runs.is_symlink():
            _remove_run_files(runs)
    return marker


def abort(out_dir: str | Path, reason: str, suite=None, by: str = "harness run") -> Path | None:
    """Record why a begun run stopped in its INCOMPLETE marker (no report is written)."""
    marker = Path(out_dir) / MARKER
    if not marker.is_file():
        return None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        write_atomic(marker, _marker_text(f"{reason} at {stamp}", suite, by))
    except OSError:
        pass
    return marker


def _remove_run_files(folder: Path) -> None:
    """Remove the files a training run writes (``RUN_FILES``) anywhere below ``folder``, then empty folders."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_symlink():
            continue
        if path.is_file() and path.name in RUN_FILES:
            path.unlink(missing_ok=True)
        elif path.is_dir():
            _rmdir_if_empty(path)
    _rmdir_if_empty(folder)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def write(report, out_dir: str | Path) -> dict[str, Path]:
    """Write ``plots/<candidate>.png``, ``report.json`` and ``summary.md``, then remove the INCOMPLETE marker;
    returns their paths."""
    out_dir = Path(out_dir)
    plots = {}
    from dataclasses import replace

    for c in report.candidates:
        result = getattr(c, "result", None)
        units = result.units if result is not None else {}
        if len(units) > 1:  # one plot per head (the first seed's): each unit has its own trajectory
            for unit, run in units.items():
                view = replace(c)
                view.plot_run, view.plot_unit = run, unit
                p = plot_candidate(view, out_dir / "plots" / f"{c.name}-{unit}.png")
                if p is not None:
                    plots[f"{c.name} ({unit})"] = str(p.relative_to(out_dir))
            continue
        p = plot_candidate(c, out_dir / "plots" / f"{c.name}.png")
        if p is not None:
            plots[c.name] = str(p.relative_to(out_dir))
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "summary.md"}
    write_atomic(paths["json"], (json.dumps(to_dict(report), indent=1, allow_nan=False) + "\n").encode())
    write_atomic(paths["markdown"], markdown(report, plots).encode())
    (out_dir / MARKER).unlink(missing_ok=True)  # last: the set is complete
    paths.update({f"plot:{k}": out_dir / v for k, v in plots.items()})
    return paths
