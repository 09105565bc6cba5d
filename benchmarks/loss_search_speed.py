"""The static loss search (`loss_properties`) for every built-in loss, here and at an earlier commit, side by side.

    python benchmarks/loss_search_speed.py [--old ed36a31] [--repeat 3]

Each side runs in its own process from its own checkout (the old one a `git worktree` at /tmp/h-<commit>, made
when missing). Per loss: the median wall seconds of `--repeat` runs on each side, the ratio, and whether the
verdicts agree (they must: the search is derandomized, and only how an example is drawn changed).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _checkout import ROOT, checkout, run_in

CHILD = r"""
import json, statistics, sys, time
from types import SimpleNamespace
from harness.registry import components
from harness.plugins.checks.loss_properties import LossProperties
out = {}
for name in components("losses"):
    times = []
    for _ in range(int(sys.argv[1])):
        t = time.perf_counter()
        r = LossProperties().run(SimpleNamespace(config={"losses": {name: {"weight": 1.0}}}))
        times.append(time.perf_counter() - t)
    out[name] = {"seconds": statistics.median(times), "passed": r.passed}
print(json.dumps(out))
"""


def measure(tree: Path, repeat: int) -> dict:
    return json.loads(run_in(tree, CHILD, str(repeat)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", default="ed36a31")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    old = measure(checkout(args.old), args.repeat)
    new = measure(ROOT, args.repeat)
    print(f"| loss | {args.old} (s) | HEAD (s) | ratio | verdicts equal |")
    print("|---|---|---|---|---|")
    for name in new:
        o, n = old.get(name), new[name]
        if o is None:
            continue
        print(f"| {name} | {o['seconds']:.2f} | {n['seconds']:.2f} | {o['seconds'] / n['seconds']:.1f}x | {o['passed'] == n['passed']} |")
    total_old = sum(old[k]["seconds"] for k in new if k in old)
    total_new = sum(new[k]["seconds"] for k in new if k in old)
    print(f"| all | {total_old:.2f} | {total_new:.2f} | {total_old / total_new:.1f}x | "
          f"{all(old[k]['passed'] == new[k]['passed'] for k in new if k in old)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
