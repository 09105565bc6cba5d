"""Gate checks on real training runs (MiniLM embeddings from the cache) and on telemetry built to sit
just inside and just outside each bound, so every check is shown to fail as well as to pass."""
from types import SimpleNamespace

import numpy as np
import pytest

from harness.plugins import get
from harness.types import EpochRecord, TrainRun

SMOKE = dict(encoder="minilm", train=["scifact", "nfcorpus"], eval=["scifact", "nfcorpus"], max_pairs=2000, epochs=3,
             device="cpu")


def check(name):
    return get("checks", name).factory


def run_check(name, candidate, **overrides):
    c = check(name)
    return c.run(candidate, **{**c.defaults, **overrides})


def candidate(config, run=None, store=None):
    return SimpleNamespace(name="test", config=config, run=run, baseline=(store.get if store else None))


@pytest.fixture(scope="module")
def trained(data_dir):
    """Three real runs: seed 002's raw-dot asymmetric head, seed 004's ResPred as its code builds it, the identity head."""
    from harness.train import TrainConfig, train

    configs = {
        "asym-dot": dict(head="asymmetric", losses={"infonce_dot": {"weight": 1.0, "temperature": 1.0}}),
        "respred-seed004": dict(
            head="respred",
            head_options={"projection": True, "hidden": "2x", "dropout": 0.1, "score_with": "projection", "similarity": "dot"},
            losses={"isotropy": {"weight": 1.5, "form": "cov", "on": "joint"},
                    "predictive": {"weight": 1.2, "source": "prediction", "stop_grad": True},
                    "residual_l2": {"weight": 0.01, "reduction": "row_sum"}},
            weight_decay=0.01, max_grad_norm=1.0,
        ),
        "identity": dict(head="identity"),
    }
    return {n: train(TrainConfig.from_dict({**SMOKE, **c, "data_dir": str(data_dir)}), progress=False) for n, c in configs.items()}


# -- static checks ---------------------------------------------------------------------------------
def test_loss_properties_flags_raw_dot_infonce_and_passes_cosine():
    bad = run_check("loss_properties", candidate({"losses": {"infonce_dot": {"weight": 1.0}}}))
    assert not bad.passed and bad.details["scale_exploitable"]["infonce_dot"]["after"] < bad.details["scale_exploitable"]["infonce_dot"]["before"]
    assert "infonce_dot" in bad.message and "scaled by" in bad.message and "Fix:" in bad.message and "seed 002" in bad.message
    good = run_check("loss_properties", candidate({"losses": {"infonce_cos": {"weight": 1.0}, "isotropy": {"weight": 1.0},
                                                              "predictive": {"weight": 1.0}, "barlow": {"weight": 1.0}}}))
    assert good.passed, good.message
    assert set(good.details["scale_invariant_or_increasing"]) == {"infonce_cos", "isotropy", "predictive", "barlow"}


def test_loss_properties_finds_the_exploit_in_a_combined_objective():
    mixed = run_check("loss_properties", candidate({"losses": {"infonce_cos": {"weight": 1.0}, "infonce_dot": {"weight": 0.1}}}))
    assert not mixed.passed and list(mixed.details["scale_exploitable"]) == ["infonce_dot"]


def test_similarity_consistency():
    cfg = {"head": "asymmetric", "head_options": {"similarity": "dot"}, "losses": {"infonce_cos": {"weight": 1.0}}}
    bad = run_check("similarity_consistency", candidate(cfg))
    assert not bad.passed and bad.measured < 0.5 and "lesson 3" in bad.message
    for sim, loss in (("dot", "infonce_dot"), ("cos", "infonce_cos")):
        ok = run_check("similarity_consistency", candidate({"head": "asymmetric", "head_options": {"similarity": sim}, "losses": {loss: {}}}))
        assert ok.passed and ok.measured == 1.0


# -- trained checks on real runs -----------------------------------------------------------------------
def test_bounded_norms_catches_raw_dot_growth(trained):
    run = trained["asym-dot"]
    r = run_check("bounded_norms", candidate(run.config, run))
    assert not r.passed, r.message
    assert r.epoch is not None and r.epoch >= 1 and "Likely cause" in r.message and "infonce_cos" in r.message
    # the numbers in the message are the run's own
    assert f"{run.epochs[0].d_norm['mean']:.4g}"[:4] in r.message or f"{run.epochs[1].pos_sim:.4g}"[:4] in r.message


def test_identity_passes_everything_but_its_own_baseline(trained, data_dir):
    from harness.gate import BaselineStore

    run = trained["identity"]
    store = BaselineStore(_baselines(), str(data_dir))
    c = candidate(run.config, run, store)
    for name in ("finite", "bounded_norms", "nonzero_residuals", "no_degradation", "no_collapse"):
        assert run_check(name, c).passed, name
    r = run_check("beats_baseline", c, encoder="minilm")
    assert not r.passed and r.details["datasets"]["average"]["diff"] == 0 and r.details["datasets"]["average"]["p"] == 1.0
    assert "ranks exactly like the frozen minilm" in r.message


def test_rerank_depth_catches_heads_that_drown_in_documents(trained):
    bad = trained["asym-dot"]
    r = run_check("rerank_depth", candidate(bad.config, bad))
    assert not r.passed and r.measured > 0.03 and "more candidates" in r.message and "seed 003" in r.message
    frozen = trained["identity"]
    last = frozen.last_epoch
    # The frozen encoder reranking its own top k ranks exactly as it retrieves: flat across depths.
    for dataset, by_depth in last.rerank_ndcg10.items():
        assert set(by_depth) == {"10", "100", "1000"}
        assert all(abs(v - last.ndcg10[dataset]) < 1e-12 for v in by_depth.values())
    assert run_check("rerank_depth", candidate(frozen.config, frozen)).passed


def test_nonzero_residuals_catches_collapse(trained):
    run = trained["respred-seed004"]
    r = run_check("nonzero_residuals", candidate(run.config, run))
    assert not r.passed and r.measured < 0.01 and r.epoch >= 1, r.message
    assert run_check("nonzero_residuals", candidate(run.config, run), min_correction_rel=r.measured / 2,
                     max_top10_overlap=1.0, min_keep=0.0).passed
    na = run_check("nonzero_residuals", candidate(trained["asym-dot"].config, trained["asym-dot"]))
    assert na.passed and na.details["not_applicable"]


def test_finite_catches_nan(trained):
    run = trained["asym-dot"]
    assert run_check("finite", candidate(run.config, run)).passed
    broken = TrainRun(run.config, run.similarity, [*run.epochs[:-1], EpochRecord(epoch=9, loss={"total": float("nan")})])
    r = run_check("finite", candidate(run.config, broken))
    assert not r.passed and r.epoch == 9 and "loss.total is NaN" in r.message


# -- thresholds on built telemetry -------------------------------------------------------------------
def epochs_with(**series):
    n = len(next(iter(series.values())))
    out = []
    for i in range(n):
        e = EpochRecord(epoch=i, q_norm={"mean": 1.0}, d_norm={"mean": 1.0}, pos_sim=0.5, rankme=100.0,
                        ndcg10={"scifact": 0.6}, top10_overlap={"scifact": 0.5})
        for k, v in series.items():
            if k == "ndcg":
                e.ndcg10 = {"scifact": v[i]}
            elif k == "qn":
                e.q_norm = {"mean": v[i]}
            elif k == "corr":
                e.residual = {"correction_rel": v[i]}
            else:
                setattr(e, k, v[i])
        out.append(e)
    return out


def fake(similarity="dot", losses=None, **series):
    config = {"head": "x", "encoder": "minilm", "eval": ["scifact"], "losses": losses or {"infonce_dot": {}}}
    return candidate(config, TrainRun(config, similarity, epochs_with(**series), baseline_rankme=100.0))


@pytest.mark.parametrize("pos, passes", [([0.02, 1.0, 1.5, 1.99], True), ([0.02, 1.0, 1.5, 2.01], False), ([0.02, 1.0, 11, 2], False)])
def test_bounded_norms_positive_similarity_bound(pos, passes):
    r = run_check("bounded_norms", fake(pos_sim=pos))
    assert r.passed is passes, r.message
    if not passes:
        assert "positive similarity (raw dot products)" in r.message and "seed 002" in r.message


def test_bounded_norms_norm_growth_only_gates_dot_heads():
    growing = dict(qn=[1.0, 1.5, 2.5], pos_sim=[0.1, 0.5, 0.6])
    assert not run_check("bounded_norms", fake("dot", **growing)).passed
    cos = run_check("bounded_norms", fake("cos", {"infonce_cos": {}}, **growing))
    assert cos.passed and "not gated" in cos.message
    assert not run_check("bounded_norms", fake("cos", {"infonce_cos": {}}, **growing), gate_norms_of_cos_heads=True).passed


@pytest.mark.parametrize("curve, passes", [([0.60, 0.62, 0.61], True), ([0.60, 0.62, 0.59], False), ([0.004, 0.006, 0.002], True)])
def test_no_degradation(curve, passes):
    r = run_check("no_degradation", fake(ndcg=curve))
    assert r.passed is passes, r.message
    if not passes:
        assert r.epoch == 2 and "from 0.6200 at epoch 1" in r.message and "early-stop" in r.message


# Epoch 0 is the untrained (often random) head: only trained epochs are judged.
@pytest.mark.parametrize("rankme, passes", [([100, 60, 51], True), ([100, 60, 49], False), ([30, 60, 55], True), ([30, 60, 45], False)])
def test_no_collapse(rankme, passes):
    r = run_check("no_collapse", fake(rankme=rankme))
    assert r.passed is passes and (passes or r.epoch == 2), r.message


@pytest.mark.parametrize("corr, passes", [([0.06, 0.05, 0.04, 0.03], True), ([0.06, 0.05, 0.02, 0.009], False), ([0.06, 0.4, 0.3, 0.1], False)])
def test_nonzero_residual_bounds(corr, passes):
    r = run_check("nonzero_residuals", fake("cos", {"predictive": {}}, corr=corr))
    assert r.passed is passes, r.message


# -- the paired test --------------------------------------------------------------------------------
def test_sign_flip_test_matches_exact_enumeration():
    from itertools import product

    from plugins.checks.beats_baseline import sign_flip_test

    d = np.array([0.3, -0.1, 0.2, 0.0, 0.25, -0.05, 0.1, 0.15])
    exact = np.mean([np.mean(np.array(s) * d) >= d.mean() - 1e-12 for s in product([-1, 1], repeat=d.size)])
    diff, p = sign_flip_test([d], permutations=40000, seed=1)
    assert diff == pytest.approx(d.mean()) and p == pytest.approx(exact, abs=0.01)
    assert sign_flip_test([np.zeros(50)])[1] == 1.0
    assert sign_flip_test([d], permutations=2000, seed=3) == sign_flip_test([d], permutations=2000, seed=3)
    # a margin is subtracted before testing: the same gain does not beat a margin larger than itself
    assert sign_flip_test([np.full(30, 0.01)], margin=0.02)[1] > 0.5


def test_beats_baseline_on_a_shifted_run(trained, data_dir):
    from harness.gate import BaselineStore

    store = BaselineStore(_baselines(), str(data_dir))
    run = trained["identity"]
    last = run.last_epoch
    shifted = EpochRecord(epoch=1, ndcg10=dict(last.ndcg10),
                          per_query_ndcg10={d: {q: v + 0.05 for q, v in pq.items()} for d, pq in last.per_query_ndcg10.items()})
    up = TrainRun(run.config, "cos", [last, shifted])
    r = run_check("beats_baseline", candidate(run.config, up, store), encoder="minilm")
    assert r.passed and all(v["p"] < 0.001 for v in r.details["datasets"].values()), r.message
    r = run_check("beats_baseline", candidate(run.config, up, store), encoder="minilm", margin=0.06)
    assert not r.passed and "needs diff > 0.06" in r.message


def _baselines():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "baselines"


def test_every_builtin_check_is_a_registered_plugin():
    from harness.plugins import components

    found = components("checks")
    for name in ("finite", "bounded_norms", "nonzero_residuals", "no_degradation", "no_collapse", "beats_baseline",
                 "similarity_consistency", "loss_properties"):
        assert found[name].plugin.startswith("plugins.checks.") and isinstance(found[name].factory.defaults, dict)
        assert found[name].factory.description and found[name].summary
