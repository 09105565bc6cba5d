"""generalizes: the head is not worse than the frozen encoder on test queries whose relevant documents it never
saw as training positives (a head can memorise its training documents and still pass on average)."""
from __future__ import annotations

import numpy as np

from harness import hookimpl, sources
from harness.checks import BaseCheck, kept_epochs_text, named_epoch, need_run

from ._stats import mde, sign_flip_test


def seen_split(test_qrels: dict, train_qrels: dict) -> tuple[set[str], set[str]]:
    """(seen, unseen) test queries: seen when at least one of its relevant documents (relevance >= 1) is a
    relevant document of some training query."""
    positives = {d for rels in train_qrels.values() for d, r in rels.items() if r >= 1}
    seen: set[str]
    unseen: set[str]
    seen, unseen = set(), set()
    for q, rels in test_qrels.items():
        relevant = {d for d, r in rels.items() if r >= 1}
        (seen if relevant & positives else unseen).add(q)
    return seen, unseen


class Generalizes(BaseCheck):
    name = "generalizes"
    scope = "candidate"
    seeds = "pooled"
    description = "not significantly worse than the frozen encoder on test queries whose relevant documents were never training positives"
    defaults = {
        "alpha": 0.05,  # one-sided level of "worse on the unseen-document queries"
        "min_queries": 30,  # a smaller unseen split is reported as too small to test
        "permutations": 10000,
        "seed": 0,
    }
    cause = "the head learned its training documents rather than a better similarity: it gains where the relevant documents were training positives and loses elsewhere"
    fix = "hold out documents as well as queries when selecting, add regularisation (weight decay, fewer epochs), or a head with fewer parameters"

    def run(self, candidate, alpha=0.05, min_queries=30, permutations=10000, seed=0):

        run = need_run(self, candidate)
        rec = run.selected_epoch
        config = run.config
        per, failing = {}, []
        for ds in config["eval"]:
            if ds not in config.get("train", []):
                per[ds] = {"note": "not a training dataset: every query is unseen by construction"}
            test_qrels = sources.qrels(ds, config.get("data_dir"), config.get("eval_split", "test"))
            train_qrels = sources.qrels(ds, config.get("data_dir"), config.get("train_split", "train")) if ds in config.get("train", []) else {}
            seen, unseen = seen_split(test_qrels, train_qrels)
            cand, base = rec.per_query_ndcg10.get(ds, {}), run.baseline_per_query_ndcg10.get(ds, {})
            entry = per.setdefault(ds, {})
            for name, group in (("seen", seen), ("unseen", unseen)):
                qids = sorted(q for q in group if q in cand and q in base)
                diff = np.array([cand[q] - base[q] for q in qids])
                entry[name] = {"n": len(qids), "gain": float(diff.mean()) if len(qids) else float("nan")}
                if name == "unseen" and len(qids) >= max(min_queries, 2):
                    _, p_worse = sign_flip_test([-diff], 0.0, permutations, seed)
                    entry[name].update(p_worse=p_worse, mde=mde(-diff, alpha))
                    if p_worse < alpha:
                        failing.append(ds)
                elif name == "unseen":
                    entry[name]["too_small"] = True
        def text(ds):
            e = per[ds]
            u = e["unseen"]
            tail = (f"p(worse)={u['p_worse']:.3g}" if "p_worse" in u else f"too few to test (< {min_queries})")
            def gain(g):
                return f"{g['gain']:+.4f}" if g["n"] else "none"
            return f"{ds}: seen-document queries {gain(e['seen'])} (n={e['seen']['n']}), unseen {gain(u)} (n={u['n']}, {tail})"
        summary = "; ".join(text(ds) for ds in config["eval"])
        if kept := kept_epochs_text(run):
            summary += f"; judged at {kept}"
        details = {"datasets": per, "judged_epoch": named_epoch(run, rec), "kept_epochs": getattr(run, "kept_epochs", {})}
        if failing:
            return self.failed(f"significantly worse than the frozen encoder on queries whose relevant documents were "
                               f"never training positives: {summary}", {d: per[d]["unseen"]["gain"] for d in failing},
                               f"p(worse) >= {alpha}", named_epoch(run, rec), **details)
        return self.passed(f"NDCG@10 gain vs the frozen encoder by whether a query's relevant documents were training "
                           f"positives: {summary}", None, f"p(worse) >= {alpha}", named_epoch(run, rec), **details)


@hookimpl
def register_checks(register):
    check = Generalizes()
    register("generalizes", check, description=check.description)
