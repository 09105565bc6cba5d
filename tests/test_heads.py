"""Each head on a small real batch of MiniLM embeddings: shapes, gradients, determinism, declared similarity."""
import pytest
import torch

from harness.registry import components
from harness.train import build_head, build_loss, is_trainable
from harness.types import Head

HEADS = ("identity", "asymmetric", "respred", "isopred", "barlow")
# the loss each head is trained with in the seeds (barlow: its pretraining loss)
SEED_LOSS = {"asymmetric": "infonce_dot", "respred": "predictive", "isopred": "predictive", "barlow": "barlow"}


@pytest.fixture(scope="module")
def real_batch():
    """32 real (query, relevant document) MiniLM embedding pairs from SciFact test (cached embeddings)."""
    from harness.protocol import load_pairs
    from harness.train import TrainConfig

    pairs = load_pairs(TrainConfig(train=["scifact"], train_split="test", max_pairs=32), torch.Generator().manual_seed(0))
    return pairs.batch(torch.arange(32))


def make(name, **options):
    torch.manual_seed(0)
    return build_head(name, 384, options)


@pytest.mark.parametrize("name", HEADS)
def test_head_is_a_plugin_declaring_its_similarity(name):
    component = components("heads")[name]
    assert component.plugin == f"harness.plugins.heads.{name}"
    assert issubclass(component.factory, Head)
    assert make(name).similarity in ("cos", "dot")


@pytest.mark.parametrize("name", HEADS)
def test_shapes_and_encoders_agree_with_forward(name, real_batch):
    q, d = real_batch
    head = make(name).eval()
    out = head(q, d)
    assert out.query.shape == q.shape and out.doc.shape == d.shape
    assert torch.equal(out.input_query, q) and torch.equal(out.input_doc, d)
    assert torch.allclose(head.encode_queries(q), out.query, atol=1e-6)
    assert torch.allclose(head.encode_docs(d), out.doc, atol=1e-6)


@pytest.mark.parametrize("name", [h for h in HEADS if h != "identity"])
def test_gradients_reach_every_parameter(name, real_batch):
    q, d = real_batch
    head = make(name).train()
    build_loss(SEED_LOSS[name])(head(q, d)).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("name", HEADS)
def test_construction_and_forward_are_deterministic(name, real_batch):
    q, d = real_batch
    a, b = make(name).eval()(q, d), make(name).eval()(q, d)
    assert torch.equal(a.query, b.query) and torch.equal(a.doc, b.doc)


def test_identity_is_frozen_and_returns_its_input(real_batch):
    q, d = real_batch
    head = make("identity")
    assert not is_trainable(head)
    assert torch.equal(head.encode_queries(q), q)


def test_asymmetric_projects_each_side_separately_and_declares_its_similarity(real_batch):
    q, d = real_batch
    head = make("asymmetric")
    assert head.similarity == "dot"  # seed 002's original
    assert make("asymmetric", similarity="cos").similarity == "cos"  # its fix
    assert not torch.allclose(head.encode_queries(q), head.encode_docs(q))  # two projections
    ident = make("asymmetric", init="identity")
    assert torch.equal(ident.encode_queries(q), q) and torch.equal(ident.encode_docs(d), d)
    assert make("asymmetric", hidden=64).encode_queries(q).shape == q.shape
    with pytest.raises(ValueError, match="similarity must be one of"):
        make("asymmetric", similarity="euclidean")


def test_respred_is_query_plus_alpha_times_tanh_delta(real_batch):
    q, d = real_batch
    head = make("respred")
    out = head(q, d)
    assert set(out.aux) >= {"delta", "alpha", "correction"}
    assert out.aux["alpha"].item() == pytest.approx(0.1)
    assert torch.allclose(out.aux["delta"], torch.tanh(head.mlp(q)))
    assert torch.allclose(out.aux["correction"], out.aux["alpha"] * out.aux["delta"])
    assert torch.allclose(out.query, q + out.aux["correction"])
    assert torch.equal(out.doc, d)
    assert isinstance(head.alpha, torch.nn.Parameter)


def test_respred_options_drop_tanh_and_fix_alpha(real_batch):
    q, d = real_batch
    head = make("respred", tanh=False, learn_alpha=False, alpha_init=0.3)
    out = head(q, d)
    assert torch.allclose(out.aux["delta"], head.mlp(q))
    assert out.aux["alpha"].item() == pytest.approx(0.3)
    assert "alpha" not in dict(head.named_parameters())
    build_loss("predictive")(out).backward()
    assert head.alpha.grad is None  # fixed


def test_isopred_predicts_the_document_side_directly(real_batch):
    q, d = real_batch
    head = make("isopred")
    out = head(q, d)
    assert torch.allclose(out.query, head.predictor(q)) and torch.equal(out.doc, d)
    assert "correction" not in out.aux  # no residual path


def test_barlow_starts_as_the_frozen_encoder_and_exposes_projections(real_batch):
    q, d = real_batch
    head = make("barlow").train()
    out = head(q, d)
    assert torch.allclose(out.query, q, atol=1e-6) and torch.allclose(out.doc, d, atol=1e-6)  # identity init
    assert out.aux["projection_q"].shape == (len(q), 384)
    assert torch.allclose(out.aux["projection_q"], head.projector(q), atol=1e-6)
    proj = make("barlow", retrieve_with="projector").eval()
    assert torch.allclose(proj.encode_queries(q), proj.projector(q), atol=1e-6)


def test_bad_head_options_name_the_head_and_its_options():
    with pytest.raises(ValueError, match=r"head 'respred'.*no option 'tanhh'.*tanh, learn_alpha"):
        build_head("respred", 384, {"tanhh": False})
    with pytest.raises(Exception, match="unknown head 'respredd'.*Did you mean 'respred'"):
        build_head("respredd", 384)


# -- seed-faithful options (from the seeds' code, ragcun) ------------------------------------------
SEED_MLP = dict(projection=True, hidden="2x", dropout=0.1)


def test_asymmetric_seed_mlp_is_dim_2dim_dim_with_dropout(real_batch):
    q, d = real_batch
    head = make("asymmetric", hidden="2x", dropout=0.1)
    layers = [type(m).__name__ for m in head.query_proj]
    assert layers == ["Linear", "GELU", "Dropout", "Linear"]
    assert head.query_proj[0].out_features == 768 and head.query_proj[2].p == 0.1
    assert make("asymmetric", hidden=768).query_proj[0].out_features == 768  # a width works too
    head.eval()
    assert torch.equal(head.encode_queries(q), head.encode_queries(q))  # dropout off in eval
    head.train()
    assert not torch.equal(head.encode_queries(q), head.encode_queries(q))  # on in training
    for bad, match in (({"dropout": 0.1}, "dropout needs a hidden layer"), ({"hidden": "2y"}, "hidden must be"),
                       ({"hidden": "2x", "dropout": 1.5}, r"dropout must be a number in \[0, 1\)")):
        with pytest.raises(ValueError, match=rf"asymmetric.*{match}"):
            build_head("asymmetric", 384, bad)


@pytest.mark.parametrize("name", ["respred", "isopred"])
def test_projection_is_shared_and_scoring_skips_the_predictor(name, real_batch):
    q, d = real_batch
    head = make(name, **SEED_MLP, score_with="projection", similarity="dot").eval()
    out = head(q, d)
    z_q, z_d = head.projection(q), head.projection(d)
    assert torch.allclose(out.query, z_q, atol=1e-6) and torch.allclose(out.doc, z_d, atol=1e-6)  # one MLP, both sides
    assert torch.allclose(head.encode_queries(q), z_q, atol=1e-6) and torch.allclose(head.encode_docs(d), z_d, atol=1e-6)
    assert head.similarity == "dot" and head.projection[0].out_features == 768
    predictor = head.mlp if name == "respred" else head.predictor
    if name == "respred":
        delta = torch.tanh(predictor(z_q))
        assert torch.allclose(out.aux["prediction"], z_q + 0.1 * delta, atol=1e-6)
        assert torch.equal(out.aux["residual_base"], out.query)
    else:
        assert torch.allclose(out.aux["prediction"], predictor(z_q), atol=1e-6)
    scored_by_predictor = make(name, **SEED_MLP).eval()  # score_with="predictor": the query side is the prediction
    out = scored_by_predictor(q, d)
    assert torch.allclose(out.query, out.aux["prediction"]) and torch.allclose(scored_by_predictor.encode_queries(q), out.query, atol=1e-6)


@pytest.mark.parametrize("name", ["respred", "isopred"])
def test_seed_losses_reach_projection_and_predictor_but_not_through_the_target(name, real_batch):
    q, d = real_batch
    head = make(name, **SEED_MLP, score_with="projection").train()
    out = head(q, d)
    pred = build_loss("predictive", {"source": "prediction", "stop_grad": True})
    pred(out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.projection.parameters())  # via the query side
    predictor = head.mlp if name == "respred" else head.predictor
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.parameters())
    # the document side is a stop-gradient target: with a detached query side nothing reaches the projection
    head.zero_grad()
    out = head(q, d)
    target_only = type(out)(out.query, out.doc, q, d, {"prediction": out.aux["prediction"].detach()})
    assert pred(target_only).requires_grad is False
    build_loss("isotropy", {"form": "cov", "on": "joint"})(out).backward()
    assert all(p.grad is not None for p in head.projection.parameters())


@pytest.mark.parametrize("name", ["respred", "isopred"])
def test_seed_option_errors_name_the_head_option_and_choices(name):
    with pytest.raises(ValueError, match=rf"{name}: score_with must be one of \('predictor', 'projection'\)"):
        build_head(name, 384, {"score_with": "both"})
    with pytest.raises(ValueError, match=rf"{name}: score_with='projection' needs projection=True"):
        build_head(name, 384, {"score_with": "projection"})
    with pytest.raises(ValueError, match=rf"{name}: similarity must be one of"):
        build_head(name, 384, {"similarity": "euclidean"})


def test_defaults_are_unchanged_by_the_seed_options(real_batch):
    """Other suites use the defaults: same parameters, same outputs as before the options existed."""
    q, d = real_batch
    assert [n for n, _ in make("respred").named_parameters()] == ["alpha", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    assert [n for n, _ in make("isopred").named_parameters()] == ["predictor.0.weight", "predictor.0.bias", "predictor.2.weight", "predictor.2.bias"]
    assert isinstance(make("asymmetric").query_proj, torch.nn.Linear)
    out = make("isopred")(q, d)
    assert out.aux == {} and torch.equal(out.doc, d)
