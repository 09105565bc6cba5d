"""The warm zoo gate: this checkout's harness against commit 6c28a94's, side by side, same machine, same run.

    git worktree add /tmp/h6c 6c28a94
    HARNESS_DATA_DIR=../shared/data/beir python benchmarks/zoo_speed.py --old /tmp/h6c [--reps 3] [--explain]

The command timed (wall clock of the whole process, imports included, and its CPU time), for each harness:

    python -m harness.cli run SUITE --seed 0 --candidate identity,asym-dot,asym-cos,respred-seed004

(``harness run`` without the console script, which imports whichever harness is installed; neither commit has a
``harness/__main__.py``, so ``python -m harness`` does not run), each harness run with ``cwd`` and ``PYTHONPATH`` at its own checkout (its ``harness`` and built-in plugins
are the ones imported: checked before timing; today's ``harness.plugins`` resolves through the editable install,
so run this from the checkout that is installed). Runs are interleaved (one of each per repetition, the
order rotated every repetition) and the medians of ``--reps`` are compared (also the median of the per-repetition
ratios, steadier when other jobs come and go):

(a) each commit on its OWN ``suites/smoke.toml`` (the literal command). Not equal work: today's suite trains a
    head per dataset, an lr grid of 3, up to 20 epochs with early stopping on dev, mined hard negatives; 6c28a94's
    trains one pooled head for 5 epochs. The epochs each trained are printed beside the times.
(b) equal work, 6c28a94's protocol: the old harness on its suite file, and today's harness on a copy of that file
    with the old protocol pinned. The copy is needed: today's harness accepts the old file as written but fills
    in today's defaults for the keys it does not set (``mode = "per_dataset"``, ``select = "dev"``,
    ``dev_fraction = 0.2``, ``patience = 8``, ``hard_negatives = 1``, ``positives = "one_per_query"``,
    ``weight_decay = 0.01``), so it would run a different protocol. The copy adds ``mode = "pooled"``,
    ``select = "last"``, ``dev_fraction = 0.0``, ``patience = 0``, ``hard_negatives = 0``, ``positives = "all"``,
    ``weight_decay = 0.0`` to ``[train]`` and ``baselines_dir`` (the old checkout's baselines); nothing else.
    The old file as written, on today's harness, is timed too (``--skip-literal`` leaves it out) and its verdicts
    shown: it is not equal work.

Then the reports of (b) are compared: NDCG@10 of every epoch (mean and per query, from each run's
telemetry.json), RankMe, and every check's outcome and measured value, per candidate; and every repetition of a
configuration is compared with its first (determinism). ``--explain`` also runs today's harness on the pinned copy
with 6c28a94's training-data path restored in-process (monkeypatched, nothing on disk changes; see ``patched``),
to show which differences make the numbers differ.

Warm: both harnesses read a private copy of ``$HARNESS_CACHE_DIR`` (embeddings, hard negatives, encoder
manifests, hash memos; not ``models/``), so neither writes into the shared cache; a repetition that had to encode
or mine anything (a new cache entry) is flagged.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = "identity,asym-dot,asym-cos,respred-seed004"
OLD_COMMIT = "6c28a94"
# 6c28a94's protocol in today's vocabulary: the keys its suite file leaves to today's (different) defaults
PINNED = {"mode": '"pooled"', "select": '"last"', "dev_fraction": "0.0", "patience": "0", "hard_negatives": "0",
          "positives": '"all"', "weight_decay": "0.0"}
# --explain: 6c28a94's training-data path restored in today's harness, one change each
PATCHES = {
    "A": "judged documents of a query ordered by document id (today: by corpus index) before the max_pairs draw",
    "B": "one generator per unit, continued by the trial (today: each trial reseeds its own: probe and shuffles)",
    "C": "no in-batch mask (today: a column that is another judged document of the row's query is masked)",
}


def git_head(path: Path) -> str:
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def env_for(root: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), HARNESS_CACHE_DIR=str(cache))
    env.pop("GITHUB_STEP_SUMMARY", None)
    return env


def imported_from(root: Path, cache: Path) -> str:
    """Where ``harness`` and its built-in plugins come from when run as the benchmark runs them; both must be under
    root (6c28a94 installs them as a top-level ``plugins``, today as ``harness.plugins``, from the same folder)."""
    package = "harness.plugins" if (root / "harness" / "registry.py").is_file() else "plugins"  # 6c28a94: harness/plugins.py is its registry
    code = (f"import importlib, harness\nbuiltins = importlib.import_module({package!r})\n"
            "print(harness.__file__); print(builtins.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env_for(root, cache), capture_output=True, text=True, check=True)
    files = out.stdout.split()
    for f in files:
        if not Path(f).resolve().is_relative_to(root.resolve()):
            sys.exit(f"{root}: imports {f}, not its own checkout's package")
    return ", ".join(files)


def private_cache(src: Path, dest: Path) -> None:
    for part in ("embeddings", "encoders", "hashes"):
        if (src / part).is_dir():
            shutil.copytree(src / part, dest / part)
    if not any((dest / "embeddings").glob("*/*.safetensors")):
        sys.exit(f"{src}: no cached embeddings; warm it first (`harness run suites/smoke.toml --seed 0` once)")


def entries(cache: Path) -> set[str]:
    return {p.name for p in (cache / "embeddings").glob("*/*.safetensors")}


def pinned_suite(old: Path, dest: Path) -> Path:
    """6c28a94's suite file with its protocol pinned in today's keys (see the module docstring); nothing else changes."""
    lines = (old / "suites" / "smoke.toml").read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.strip() == "[train]")
    first_table = next(i for i, line in enumerate(lines) if line.lstrip().startswith("["))
    added = [f"{k} = {v}  # pinned: 6c28a94's protocol\n" for k, v in PINNED.items()]
    lines[at + 1 : at + 1] = added
    lines.insert(first_table, f"baselines_dir = {json.dumps(str((old / 'baselines').resolve()))}  # pinned: the old checkout's\n")
    path = dest / "smoke-6c28a94-pinned.toml"
    path.write_text("".join(lines))
    return path


def run_gate(root: Path, suite: Path, out: Path, cache: Path, patch: str | None = None) -> dict:
    args = ["run", str(suite), "--seed", "0", "--candidate", CANDIDATES, "--out", str(out), "--no-progress", "--no-github-summary"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--patched", patch, *args] if patch else [sys.executable, "-m", "harness.cli", *args]
    before = entries(cache)
    cpu0 = child_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env_for(root, cache), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = child_cpu() - cpu0
    report = out / "report.json"
    if not report.is_file():
        sys.exit(f"{' '.join(cmd)} (in {root}) wrote no report, exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    r = json.loads(report.read_text())
    return {"wall": wall, "cpu": cpu, "seconds": float(r.get("seconds") or 0.0), "rc": proc.returncode, "verdict": r.get("verdict"),
            "cold": sorted(entries(cache) - before), "out": out, "epochs": epochs_trained(r)}


def child_cpu() -> float:
    """CPU seconds (user + system) of every finished child process so far: less sensitive than wall time to
    other jobs on a shared machine (they take cores away, not this run's instructions)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def epochs_trained(report: dict) -> int:
    n = 0
    for c in report["candidates"]:
        if c.get("training"):
            for units in c["training"].values():
                for u in units.values():
                    n += sum(t["epochs_run"] for t in u["protocol"]["trials"])
        else:
            n += max(len(c.get("epochs") or []) - 1, 0)
    return n


def numbers(folder: Path) -> dict:
    """Per candidate: every epoch's NDCG@10 (mean per dataset, per query), RankMe, and each check's outcome and value."""
    r = json.loads((folder / "report.json").read_text())
    out = {}
    for c in r["candidates"]:
        tel = Path(c["telemetry"]) if c.get("telemetry") else None
        t = json.loads(tel.read_text()) if tel and tel.is_file() else {"epochs": []}
        out[c["name"]] = {
            "ndcg10": [e["ndcg10"] for e in c["epochs"]],
            "per_query": [e.get("per_query_ndcg10") for e in t["epochs"]],
            "rankme": [e.get("rankme") for e in c["epochs"]],
            "outcome": {k: o["outcome"] for k, o in c["checks"].items()},
            "measured": {k: o.get("measured") for k, o in c["checks"].items()},
        }
    return out


def compare(a: dict, b: dict) -> dict:
    """What differs between two reports' numbers, per candidate (empty lists: identical)."""
    diff = {}
    for name in a:
        x, y = a[name], b.get(name)
        if y is None:
            diff[name] = {"missing": True}
            continue
        epochs = [i for i, (p, q) in enumerate(zip(x["ndcg10"], y["ndcg10"])) if p != q]
        if len(x["ndcg10"]) != len(y["ndcg10"]):
            epochs.append("count")
        diff[name] = {
            "epochs": epochs,
            "per_query": [i for i, (p, q) in enumerate(zip(x["per_query"], y["per_query"])) if p != q],
            "rankme": [i for i, (p, q) in enumerate(zip(x["rankme"], y["rankme"])) if p != q],
            "outcome": {k: (v, y["outcome"].get(k)) for k, v in x["outcome"].items() if v != y["outcome"].get(k)},
            "measured": {k: (v, y["measured"].get(k)) for k, v in x["measured"].items() if v != y["measured"].get(k)},
        }
    return diff


def identical(diff: dict) -> bool:
    return all(not any(v.values()) for v in diff.values())


def show_diff(diff: dict, label: str) -> None:
    print(f"{label}: {'IDENTICAL (every epoch NDCG@10 mean and per query, RankMe, outcomes, measured values)' if identical(diff) else 'differ'}")
    if identical(diff):
        return
    for name, d in diff.items():
        if not any(d.values()):
            print(f"  {name:<16} identical")
            continue
        parts = []
        if d.get("epochs"):
            parts.append(f"NDCG@10 differs at epochs {d['epochs']} (epoch 0 {'equal' if 0 not in d['epochs'] else 'DIFFERS'})")
        if d.get("outcome"):
            parts.append("outcomes differ: " + ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in d["outcome"].items()))
        else:
            parts.append("every outcome equal")
        if d.get("measured"):
            parts.append("measured values differ: " + ", ".join(sorted(d["measured"])))
        print(f"  {name:<16} " + "; ".join(parts))


def ndcg_table(old: dict, new: dict) -> None:
    """The kept (last) epoch's NDCG@10 per candidate and dataset, and whether the checks' outcomes agree."""
    print(f"  {'candidate':<16} {'dataset':<9} {'6c28a94':>8} {'today':>8} {'diff':>8}   check outcomes")
    for name in old:
        last_o, last_n = old[name]["ndcg10"][-1], new[name]["ndcg10"][-1]
        o, n = old[name]["outcome"], new[name]["outcome"]
        counts = ", ".join(f"{v} {list(o.values()).count(v)}" for v in ("pass", "xfail", "fail", "xpass", "n/a") if v in o.values())
        agree = f"{len(o)}/{len(o)} equal ({counts})" if o == n else "DIFFER: " + ", ".join(
            f"{k} {v} -> {n.get(k)}" for k, v in o.items() if v != n.get(k))
        for i, ds in enumerate(last_o):
            print(f"  {name if i == 0 else '':<16} {ds:<9} {last_o[ds]:8.4f} {last_n[ds]:8.4f} {last_n[ds] - last_o[ds]:+8.4f}   "
                  f"{agree if i == 0 else ''}")


def patched(flags: str, argv: list[str]) -> int:
    """Today's harness with 6c28a94's training-data path restored in this process (``PATCHES``; flags e.g. "A,B,C").
    For --explain only: the functions' source is edited in memory, and an edit that no longer applies stops it."""
    import inspect
    import textwrap

    import torch

    from harness import protocol, train

    def edit(mod, fn, old: str, new: str) -> None:
        src = textwrap.dedent(inspect.getsource(getattr(mod, fn)))
        if src.count(old) != 1:
            sys.exit(f"--explain: {mod.__name__}.{fn} changed; patch {old!r} no longer applies")
        exec(compile(src.replace(old, new), mod.__file__, "exec"), mod.__dict__)

    chosen = set(flags.split(","))
    if "A" in chosen:
        edit(protocol, "build_unit", "sorted(dpos[d] for d, r in qrels.get(q, {}).items() if r >= 1 and d in dpos)",
             "[dpos[d] for d in sorted(qrels.get(q, {})) if qrels[q][d] >= 1 and d in dpos]")
        train.build_unit = protocol.build_unit
    if "B" in chosen:
        edit(train, "train_unit", "sets = load_eval(config, gen, unit.eval)",
             "sets = load_eval(config, gen, unit.eval); globals()['_UNIT_GEN'] = gen")
        edit(train, "_trial", "gen = torch.Generator().manual_seed(config.seed)", "gen = _UNIT_GEN")
    if "C" in chosen:
        protocol.TrainingSet.exclude = lambda self, qi, cols: torch.zeros(len(qi), len(cols), dtype=torch.bool)
    from harness.cli import main

    return main(argv)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--patched":
        sys.path.insert(0, str(ROOT))
        return patched(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default="/tmp/h6c", help=f"a checkout of {OLD_COMMIT} (git worktree add /tmp/h6c {OLD_COMMIT})")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-literal", action="store_true", help="do not time the old suite file as written on today's harness")
    parser.add_argument("--explain", action="store_true", help="also run today's harness with 6c28a94's data path restored (A+B, A+B+C)")
    parser.add_argument("--keep", help="write the reports here (default: a temporary folder, removed)")
    args = parser.parse_args()
    old = Path(args.old).resolve()
    if not (old / "harness" / "cli.py").is_file():
        sys.exit(f"{old}: not a checkout of the harness; git worktree add {old} {OLD_COMMIT}")
    if not os.environ.get("HARNESS_DATA_DIR"):
        sys.exit("set HARNESS_DATA_DIR (the BEIR data folder)")
    src_cache = Path(os.environ.get("HARNESS_CACHE_DIR") or ROOT / ".cache")

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="zoo-speed-"))
    tmp.mkdir(parents=True, exist_ok=True)
    cache = tmp / "cache"
    try:
        private_cache(src_cache, cache)
        pinned = pinned_suite(old, tmp)
        print(f"today: {ROOT} at {git_head(ROOT)}; imports {imported_from(ROOT, cache)}")
        print(f"old:   {old} at {git_head(old)}; imports {imported_from(old, cache)}")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
              f"cache: a copy of {src_cache} ({len(entries(cache))} entries)")
        configs = {
            "6c28a94, its suite": (old, old / "suites" / "smoke.toml"),
            "today, its suite": (ROOT, ROOT / "suites" / "smoke.toml"),
            "today, 6c28a94's suite pinned": (ROOT, pinned),
        }
        if not args.skip_literal:
            configs["today, 6c28a94's suite as written"] = (ROOT, old / "suites" / "smoke.toml")
        results: dict[str, list[dict]] = {k: [] for k in configs}
        names = list(configs)
        for rep in range(args.reps):
            for k in range(len(names)):
                label = names[(rep + k) % len(names)]
                root, suite = configs[label]
                slug = label.replace(",", "").replace("'", "").replace(" ", "-")
                res = run_gate(root, suite, tmp / f"{slug}-{rep}", cache)
                results[label].append(res)
                print(f"  rep {rep + 1} {label:<34} {res['wall']:7.1f} s wall {res['cpu']:7.1f} s CPU  (report {res['seconds']:6.1f} s, {res['verdict']}, "
                      f"exit {res['rc']}, {res['epochs']} epochs trained)" + (f"  COLD: {len(res['cold'])} new cache entries" if res["cold"] else ""),
                      flush=True)

        print(f"load average after the timed runs: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
        med = {k: statistics.median(r["wall"] for r in v) for k, v in results.items()}
        cpu = {k: statistics.median(r["cpu"] for r in v) for k, v in results.items()}
        print(f"\n`harness run SUITE --seed 0 --candidate {CANDIDATES}`, median of {args.reps} (interleaved): wall clock and CPU time")
        for k, v in results.items():
            walls = [r["wall"] for r in v]
            print(f"  {k:<34} {med[k]:7.1f} s wall (min {min(walls):.1f}, max {max(walls):.1f})  {cpu[k]:7.1f} s CPU   "
                  f"verdict {v[0]['verdict']}, {v[0]['epochs']} epochs trained")

        def ratios(slow: str, fast: str) -> str:
            paired = statistics.median(a["wall"] / b["wall"] for a, b in zip(results[slow], results[fast]))
            return (f"{med[slow] / med[fast]:.2f}x wall (median of per-repetition ratios {paired:.2f}x), "
                    f"{cpu[slow] / cpu[fast]:.2f}x CPU")

        own_old, own_new, pinned_new = "6c28a94, its suite", "today, its suite", "today, 6c28a94's suite pinned"
        print(f"(a) own suites (the literal command; not equal work): today / 6c28a94 = {ratios(own_new, own_old)} "
              f"({results[own_new][0]['epochs']} vs {results[own_old][0]['epochs']} epochs trained)")
        print(f"(b) 6c28a94's protocol on both (equal work): 6c28a94 / today = {ratios(own_old, pinned_new)} (> 1: today faster)")
        literal = "today, 6c28a94's suite as written"
        if literal in med:
            print(f"    6c28a94's file as written on today's harness: {med[literal]:.1f} s, verdict {results[literal][0]['verdict']} "
                  f"(today's defaults fill the unset protocol keys: per-dataset heads, dev selection, hard negatives; not equal work)")

        print("\nreports of (b): 6c28a94 on its suite vs today on the pinned copy, seed 0")
        old_n, new_n = numbers(results[own_old][0]["out"]), numbers(results[pinned_new][0]["out"])
        ndcg_table(old_n, new_n)
        show_diff(compare(old_n, new_n), "6c28a94 vs today (pinned)")
        for k, v in results.items():
            same = all(identical(compare(numbers(v[0]["out"]), numbers(r["out"]))) for r in v[1:])
            print(f"determinism, {k}: {len(v)} repetitions {'identical' if same else 'DIFFER'}")

        if args.explain:
            print("\n--explain: today's harness on the pinned copy with 6c28a94's training-data path restored in-process:")
            for flag, what in PATCHES.items():
                print(f"  {flag}: {what}")
            for flags in ("A,B", "A,B,C"):
                res = run_gate(ROOT, pinned, tmp / f"patched-{flags.replace(',', '')}", cache, patch=flags)
                print(f"  {flags}: {res['wall']:.1f} s wall, verdict {res['verdict']}")
                show_diff(compare(old_n, numbers(res["out"])), f"  6c28a94 vs today + {flags}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
