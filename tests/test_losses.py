"""Each loss against hand-computed values, on real MiniLM batches, and with the gate's defaults-only calls."""
import math

import pytest
import torch

from harness.registry import components
from harness.train import build_loss
from harness.types import HeadOutput

LOSSES = ("infonce_dot", "infonce_cos", "isotropy", "predictive", "residual_l2", "barlow")


def out_of(q, d, **aux):
    return HeadOutput(q, d, q.detach().clone(), d.detach().clone(), dict(aux))


@pytest.fixture(scope="module")
def real_batch():
    """64 real (query, relevant document) MiniLM embedding pairs from SciFact test (cached embeddings)."""
    from harness.protocol import load_pairs
    from harness.train import TrainConfig

    pairs = load_pairs(TrainConfig(train=["scifact"], train_split="test", max_pairs=64), torch.Generator().manual_seed(0))
    return pairs.batch(torch.arange(64))


def test_every_loss_is_registered_by_the_losses_plugin():
    found = components("losses")
    for name in LOSSES:
        assert found[name].plugin == "harness.plugins.losses"


def test_infonce_dot_matches_hand_computed_cross_entropy():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
    # logits q @ d.T = [[1, 0, 0], [0, 2, 1], [1, 2, 1]]; the positive is the diagonal
    rows = [(1, [1, 0, 0]), (2, [0, 2, 1]), (1, [1, 2, 1])]
    expected = sum(-pos + math.log(sum(math.exp(v) for v in row)) for pos, row in rows) / 3
    assert build_loss("infonce_dot", {"temperature": 1.0})(out_of(q, d)).item() == pytest.approx(expected, rel=1e-6)
    # temperature divides the logits
    rows_t = [(p / 0.5, [v / 0.5 for v in r]) for p, r in rows]
    expected_t = sum(-p + math.log(sum(math.exp(v) for v in r)) for p, r in rows_t) / 3
    assert build_loss("infonce_dot", {"temperature": 0.5})(out_of(q, d)).item() == pytest.approx(expected_t, rel=1e-6)


def test_infonce_cos_matches_hand_computed_cross_entropy():
    q = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 1.0], [0.0, 5.0]])
    c = 1 / math.sqrt(2)  # cos(q0, d0) = cos(q1, d0) = 1/sqrt(2); cos(q0, d1) = 0; cos(q1, d1) = 1
    t = 0.05
    expected = ((-c / t + math.log(math.exp(c / t) + math.exp(0))) + (-1 / t + math.log(math.exp(c / t) + math.exp(1 / t)))) / 2
    loss = build_loss("infonce_cos")  # default temperature 0.05
    assert loss(out_of(q, d)).item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(loss.scores(out_of(q, d)), torch.tensor([[c, 0.0], [c, 1.0]]), atol=1e-6)


def test_raw_dot_infonce_rewards_magnitude_and_cosine_does_not(real_batch):
    """Seed 002's failure: once positives rank first, raw-dot InfoNCE keeps falling as the real embeddings
    merely grow (no ranking changes); cosine InfoNCE does not move."""
    q, d = real_batch
    dot, cos = build_loss("infonce_dot"), build_loss("infonce_cos")
    sims = q @ d.T
    first = (sims.argmax(1) == torch.arange(len(q))).nonzero().flatten()
    assert len(first) >= 16  # MiniLM ranks most SciFact positives first within a batch of 64
    q, d = q[first], d[first]  # fewer negatives: each positive still ranks first
    losses = [dot(out_of(s * q, s * d)).item() for s in (1, 2, 4, 8)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.1 * losses[0]
    assert cos(out_of(8 * q, 8 * d)).item() == pytest.approx(cos(out_of(q, d)).item(), rel=1e-5)


def test_isotropy_is_zero_for_an_isotropic_batch_and_one_minus_1_over_d_for_a_line():
    eye = torch.eye(4)
    iso = torch.cat([eye, -eye])  # centred, covariance proportional to I
    assert build_loss("isotropy")(out_of(iso, iso)).item() == pytest.approx(0.0, abs=1e-7)
    line = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]] * 3)  # all variance on one axis
    assert build_loss("isotropy", {"on": "query"})(out_of(line, iso)).item() == pytest.approx(1 - 1 / 4, rel=1e-6)
    assert build_loss("isotropy", {"on": "both"})(out_of(line, iso)).item() == pytest.approx((1 - 1 / 4) / 2, rel=1e-6)


def test_isotropy_of_real_embeddings_is_scale_free_and_above_its_floor(real_batch):
    q, d = real_batch
    loss = build_loss("isotropy")
    value = loss(out_of(q, d)).item()
    assert value == pytest.approx(loss(out_of(7 * q, 0.1 * d)).item(), rel=1e-4)
    assert value > 1 / 64 - 1 / 384  # the floor with 64 rows in 384 dimensions
    # a batch collapsed onto one point with small isotropic jitter is far from isotropic
    g = torch.Generator().manual_seed(0)
    collapsed = q.mean(0) + 1e-3 * torch.randn(q.shape, generator=g)
    assert loss(out_of(collapsed, collapsed)).item() > 0.9


def test_predictive_is_elementwise_mse():
    q = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    d = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
    assert build_loss("predictive")(out_of(q, d)).item() == pytest.approx((1 + 0 + 9 + 1) / 4)


def test_residual_l2_reads_delta_or_correction_and_is_zero_without_them():
    q = torch.ones(2, 3, requires_grad=True)
    delta = torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 3.0]])
    out = out_of(q, q, delta=delta, correction=0.1 * delta)
    assert build_loss("residual_l2")(out).item() == pytest.approx(14 / 6)
    assert build_loss("residual_l2", {"on": "correction"})(out).item() == pytest.approx(0.14 / 6)
    zero = build_loss("residual_l2")(out_of(q, q))
    assert zero.item() == 0.0
    zero.backward()  # still part of the graph, so a weighted sum of losses backpropagates
    assert q.grad is not None


def test_barlow_matches_hand_computed_cross_correlation():
    a = torch.tensor([[1.0, 2.0], [-1.0, 0.0], [0.0, -2.0]])
    # columns standardised: [1,-1,0]/sqrt(2/3) and [1,0,-1]/sqrt(2/3); C = [[1, .5], [.5, 1]]
    loss = build_loss("barlow", {"lambd": 0.01, "eps": 0.0})
    assert loss.cross_correlation(out_of(a, a)) == pytest.approx(torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    assert loss(out_of(a, a)).item() == pytest.approx(0.01 * 2 * 0.25, rel=1e-5)
    # uses the projector outputs when the head provides them
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert loss(out_of(b, b, projection_q=a, projection_d=a)).item() == pytest.approx(0.005, rel=1e-5)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_every_loss_works_with_defaults_on_plain_outputs(name, scale):
    """What the gate's loss-property check does: defaults, (B, D) tensors, empty aux."""
    g = torch.Generator().manual_seed(1)
    q = (scale * torch.randn(16, 8, generator=g)).requires_grad_()
    d = (scale * torch.randn(16, 8, generator=g)).requires_grad_()
    value = components("losses")[name].factory()(HeadOutput(q, d, q, d))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_reach_a_real_batch(name, real_batch):
    q, d = real_batch
    q = q.clone().requires_grad_()
    out = HeadOutput(q * 1.5, d, q, d, {"delta": q * 0.5, "correction": q * 0.05})
    build_loss(name)(out).backward()
    assert q.grad.abs().sum() > 0


def test_bad_options_name_the_loss_and_its_options():
    with pytest.raises(ValueError, match=r"loss 'infonce_cos'.*no option 'temp'.*temperature"):
        build_loss("infonce_cos", {"temp": 0.1})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_loss("infonce_dot", {"temperature": 0})


# -- the seeds' loss forms (ragcun scripts/train_respred.py, train_asymmetric.py, train/isotropic.py) ----
def test_isotropy_cov_form_matches_hand_computed_value():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    # mean 0; cov = x.T x / 3 = [[2/3, 0], [0, 8/3]]; var of all 8 entries (mean 0) = (1+1+4+4)/7 = 10/7
    v = 10 / 7
    expected = math.sqrt((2 / 3 - v) ** 2 + (8 / 3 - v) ** 2) / 2
    loss = build_loss("isotropy", {"form": "cov", "on": "query"})
    assert loss(out_of(x, x)).item() == pytest.approx(expected, rel=1e-6)
    # not scale-free (unlike the default form), and blind to a batch collapsed onto one point
    assert loss(out_of(3 * x, x)).item() == pytest.approx(9 * expected, rel=1e-5)
    point = torch.ones(4, 2)
    assert loss(out_of(point, point)).item() == pytest.approx(0.0, abs=1e-7)


def test_isotropy_joint_stacks_query_and_doc_rows():
    q = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    d = torch.tensor([[0.0, 2.0], [0.0, -2.0]])
    joint = build_loss("isotropy", {"form": "cov", "on": "joint"})(out_of(q, d)).item()
    x = torch.cat([q, d])
    assert joint == pytest.approx(build_loss("isotropy", {"form": "cov", "on": "query"})(out_of(x, x)).item(), rel=1e-6)
    with pytest.raises(ValueError, match="isotropy option form= must be one of 'second_moment', 'cov'"):
        build_loss("isotropy", {"form": "frobenius"})
    with pytest.raises(ValueError, match="isotropy option on= must be 'query', 'doc', 'both' or 'joint'"):
        build_loss("isotropy", {"on": "all"})


def test_predictive_reads_the_prediction_and_stops_the_target_gradient():
    q = torch.tensor([[9.0, 9.0]])
    pred = torch.tensor([[1.0, 2.0]], requires_grad=True)
    d = torch.tensor([[0.0, 2.0]], requires_grad=True)
    out = HeadOutput(q, d, q, d, {"prediction": pred})
    loss = build_loss("predictive", {"source": "prediction", "stop_grad": True})(out)
    assert loss.item() == pytest.approx((1 + 0) / 2)  # the prediction, not the scored query side
    loss.backward()
    assert pred.grad is not None and d.grad is None
    build_loss("predictive", {"source": "prediction"})(out).backward()
    assert d.grad is not None  # without stop_grad the target moves too
    with pytest.raises(ValueError, match=r"predictive: source='prediction' needs a head that emits aux\['prediction'\]"):
        build_loss("predictive", {"source": "prediction"})(out_of(q, q))
    with pytest.raises(ValueError, match="predictive option source= must be 'query' or 'prediction'"):
        build_loss("predictive", {"source": "doc"})


def test_residual_l2_row_sum_is_the_mean_squared_row_norm():
    q = torch.ones(2, 3)
    delta = torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 3.0]])
    out = out_of(q, q, delta=delta)
    assert build_loss("residual_l2", {"reduction": "row_sum"})(out).item() == pytest.approx((5 + 9) / 2)
    with pytest.raises(ValueError, match="residual_l2 option reduction= must be 'mean' or 'row_sum'"):
        build_loss("residual_l2", {"reduction": "sum"})
