"""A checkout of an earlier commit for side-by-side benchmarks: a `git worktree` at /tmp/h-<commit>, made when
missing, whose `harness.plugins` points at its own `plugins/` (the editable install maps it to this checkout)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(commit: str) -> Path:
    path = Path(f"/tmp/h-{commit}")
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path), commit], check=True)
    link = path / "harness" / "plugins"
    if not link.is_symlink() and not link.exists():  # a broken link is left for the import to report
        link.symlink_to("../plugins")
    return path


def run_in(tree: Path, code: str, *args: str) -> str:
    """Run ``code`` with ``python -c`` from ``tree`` (its harness first on the path); return the last stdout line."""
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]
