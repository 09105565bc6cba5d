"""The test statistics the checks share (plugins/checks/_stats.py), checked against exact enumeration, SciPy's
permutation test on real-sized inputs (the stored per-query NDCG@10 of two encoders), Holm by hand, and the
power the minimum detectable effect promises. Fast: no data folder, no training."""
import json
import math
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from harness.plugins.checks import _stats
from harness.plugins.checks._stats import holm, mde, paired, sign_flip_test, trend

BASELINES = Path(__file__).resolve().parent.parent / "baselines"


def stored(encoder, dataset):
    return json.loads((BASELINES / encoder / f"{dataset}-test.json").read_text())["per_query_ndcg10"]


@pytest.fixture(scope="module")
def real_pairs():
    """MPNet vs MiniLM per-query NDCG@10 on SciFact (300 queries) and NFCorpus (323): real paired data."""
    return {ds: paired(stored("mpnet", ds), stored("minilm", ds))[1:] for ds in ("scifact", "nfcorpus")}


def test_sign_flip_test_is_exported_by_beats_baseline_and_matches_exact_enumeration():
    from harness.plugins.checks.beats_baseline import sign_flip_test as exported

    assert exported is sign_flip_test
    d = np.array([0.3, -0.1, 0.2, 0.0, 0.25, -0.05, 0.1, 0.15, -0.2, 0.05])
    for margin in (0.0, -0.05, 0.05):
        s = d - margin
        exact = np.mean([np.mean(np.array(x) * s) >= s.mean() - 1e-12 for x in product([-1, 1], repeat=d.size)])
        diff, p = sign_flip_test([d], margin=margin, permutations=40000, seed=2)
        assert diff == pytest.approx(d.mean()) and p == pytest.approx(exact, abs=0.01)


# superiority (margin 0 or 0.01) and non-inferiority by 0.01 (margin -0.01), where the p-value is informative
@pytest.mark.parametrize("dataset, margin", [("scifact", 0.0), ("nfcorpus", 0.0), ("scifact", -0.01), ("nfcorpus", 0.01)])
def test_sign_flip_test_agrees_with_scipy_permutation_test(real_pairs, dataset, margin):
    """Same one-sided p-value as scipy.stats.permutation_test (paired: permutation_type='samples') within
    Monte-Carlo error: each estimate's sd is sqrt(p(1-p)/N); their difference is allowed 5 sd."""
    stats = pytest.importorskip("scipy.stats")
    c, b = real_pairs[dataset]
    n = 20000
    _, ours = sign_flip_test([c - b], margin=margin, permutations=n, seed=0)
    ref = stats.permutation_test((c - margin, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                                 alternative="greater", n_resamples=n, vectorized=True, rng=np.random.default_rng(0)).pvalue
    sd = math.sqrt(2 * ref * (1 - ref) / n)
    assert 0.005 < ref < 0.5, ref  # informative inputs: neither p-value is pinned at 0 or 1
    assert abs(ours - ref) < 5 * sd + 1 / n, (ours, ref)


def test_sign_flip_test_macro_average_seeding_and_blocks(real_pairs, monkeypatch):
    diffs = [c - b for c, b in real_pairs.values()]
    diff, p = sign_flip_test(diffs, permutations=4000, seed=5)
    assert diff == pytest.approx(np.mean([d.mean() for d in diffs]))
    assert sign_flip_test(diffs, permutations=4000, seed=5) == (diff, p)  # seeded
    monkeypatch.setattr(_stats, "_BLOCK", 1000)  # many small blocks of sign matrices: same test, other draws
    _, p_blocks = sign_flip_test(diffs, permutations=4000, seed=5)
    assert p_blocks == pytest.approx(p, abs=5 * math.sqrt(2 * p * (1 - p) / 4000) + 1e-3)
    assert sign_flip_test([np.zeros(40)])[1] == 1.0
    assert sign_flip_test([np.full(30, 0.01)], margin=0.02)[1] > 0.5
    with pytest.raises(ValueError):
        sign_flip_test([np.array([])])


def test_holm_by_hand():
    adjusted, rejected = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> 0.06 (monotone)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02]) and rejected == [True, False, False, True]
    adj, rej = holm({"a": 0.03, "b": 0.04}, alpha=0.05)  # each < alpha alone, not as a family of two
    assert adj == pytest.approx({"a": 0.06, "b": 0.06}) and rej == {"a": False, "b": False}
    assert holm({"only": 0.04})[1] == {"only": True} and holm([0.02, 0.9])[0] == pytest.approx([0.04, 0.9])
    assert holm([0.6, 0.7, 0.9])[0] == pytest.approx([1.0, 1.0, 1.0])  # capped at 1


def test_mde_formula_and_its_promised_power():
    rng = np.random.default_rng(0)
    d = rng.normal(0.0, 0.2, size=300)
    z = 1.6448536269514722 + 0.8416212335729143  # z_0.95 + z_0.8
    assert mde(d) == pytest.approx(z * d.std(ddof=1) / math.sqrt(300))
    assert mde(d, alpha=0.01, power=0.9) > mde(d)
    two = [d, rng.normal(0, 0.1, size=200)]
    assert mde(two) == pytest.approx(z * math.sqrt(two[0].var(ddof=1) / 300 + two[1].var(ddof=1) / 200) / 2)
    assert math.isnan(mde(np.array([0.1])))
    # a true gain equal to the MDE is detected by the sign-flip test about 80% of the time
    effect = z * 0.2 / math.sqrt(300)
    hits = [sign_flip_test([rng.normal(effect, 0.2, size=300)], permutations=500, seed=i)[1] < 0.05 for i in range(200)]
    assert 0.68 < np.mean(hits) < 0.92, np.mean(hits)


def test_paired_refuses_different_query_sets():
    qids, c, b = paired({"q2": 0.5, "q1": 1.0}, {"q1": 0.0, "q2": 0.5})
    assert qids == ["q1", "q2"] and list(c - b) == [1.0, 0.0]
    with pytest.raises(ValueError, match="1 only in the baseline"):
        paired({"q1": 1.0}, {"q1": 0.0, "q2": 0.5}, "x")


def test_trend_linear_and_log_linear():
    t = trend([0, 1, 2, 3], [1.0, 1.5, 2.0, 2.5])
    assert t["slope"] == pytest.approx(0.5) and t["at"](10) == pytest.approx(6.0) and t["crossing"](3.0) == pytest.approx(4.0)
    g = trend([0, 1, 2, 3], [1.0, 1.2, 1.44, 1.728], "log-linear")
    assert g["slope"] == pytest.approx(1.2) and g["at"](5) == pytest.approx(1.2 ** 5)
    assert g["crossing"](1.2 ** 7) == pytest.approx(7.0)
    assert trend([0, 1, 2], [-1.0, 0.0, 1.0], "log-linear")["kind"] == "linear"  # log needs positive values
    assert trend([0, 1, 2], [1.0, 1.0, 1.0])["crossing"](2.0) == math.inf
