"""The failures the gate once missed, each built from a head of our own, trained for real on SciFact (cached
MiniLM embeddings) and judged by the real checks: a loss that turns NaN mid-training, a head that does nothing,
magnitude growth by one learnable scale under raw-dot InfoNCE, and a head that collapses its documents on every seed."""
import json
import sys
import types

import pytest
import torch

import harness.registry as hp
from harness import hookimpl
from harness.types import Head, HeadOutput

QUICK = dict(train=["scifact"], eval=["scifact"], batch_size=32, probe_pairs=128, samples_per_epoch=2, lr_grid=[],
             patience=0)


class NanAfter(Head):
    """A zero-initialised residual whose output turns NaN from the 15th training forward on."""

    similarity = "cos"
    default_losses = {"infonce_cos": {"weight": 1.0, "temperature": 0.05}}

    def __init__(self, dim: int, after: int = 15):
        super().__init__(dim)
        self.w = torch.nn.Linear(dim, dim)
        torch.nn.init.zeros_(self.w.weight), torch.nn.init.zeros_(self.w.bias)
        self.after, self.calls = after, 0

    def encode_queries(self, q):
        return q + self.w(q)

    def encode_docs(self, d):
        return d

    def forward(self, q, d):
        out = q + self.w(q)
        if self.training:
            self.calls += 1
            if self.calls >= self.after:
                out = out * float("nan")
        return HeadOutput(out, d, q, d)


class ClosedGate(Head):
    """A residual MLP behind a gate that never opens (multiplied by 0): exactly the frozen encoder, trainable,
    and it reports no aux['correction']."""

    similarity = "cos"
    default_losses = {"infonce_cos": {"weight": 1.0, "temperature": 0.05}}

    def __init__(self, dim: int):
        super().__init__(dim)
        self.mlp = torch.nn.Linear(dim, dim)

    def encode_queries(self, q):
        return q + 0.0 * self.mlp(q)

    def encode_docs(self, d):
        return d


class SharedRotation(Head):
    """A fixed random rotation of both sides times one learnable scale: cosine ranks exactly as the frozen encoder
    does at every epoch, so no trained epoch beats epoch 0 on the dev split."""

    similarity = "cos"
    default_losses = {"infonce_cos": {"weight": 1.0, "temperature": 0.05}}

    def __init__(self, dim: int):
        super().__init__(dim)
        rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(1234)))
        self.register_buffer("rotation", rotation)
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def encode_queries(self, q):
        return self.scale * q @ self.rotation

    def encode_docs(self, d):
        return self.scale * d @ self.rotation


class EvalDropout(Head):
    """A zero-initialised residual whose query side keeps dropout on at evaluation (training=True always)."""

    similarity = "cos"
    default_losses = {"infonce_cos": {"weight": 1.0, "temperature": 0.05}}

    def __init__(self, dim: int, p: float = 0.1):
        super().__init__(dim)
        self.p = p
        self.w = torch.nn.Linear(dim, dim)
        torch.nn.init.zeros_(self.w.weight), torch.nn.init.zeros_(self.w.bias)

    def encode_queries(self, q):
        return torch.nn.functional.dropout(q + self.w(q), self.p, training=True)

    def encode_docs(self, d):
        return d


class NanDocuments(EvalDropout):
    """Clean in training (forward is separate); its retrieval path turns the top 2% of documents by their first
    coordinate into NaN."""

    def encode_queries(self, q):
        return q + self.w(q)

    def encode_docs(self, d):
        bad = (d[:, 0] > torch.quantile(d[:, 0], 0.98)).unsqueeze(1)
        return torch.where(bad, torch.full_like(d, float("nan")), d)

    def forward(self, q, d):
        return HeadOutput(self.encode_queries(q), d, q, d)


class LearnableScale(Head):
    """The frozen encoder times one learnable scale, scored by raw dot products."""

    similarity = "dot"
    default_losses = {"infonce_dot": {"weight": 1.0, "temperature": 1.0}}

    def __init__(self, dim: int):
        super().__init__(dim)
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def encode_queries(self, q):
        return self.scale * q

    def encode_docs(self, d):
        return self.scale * d


class SqueezedDocuments(EvalDropout):
    """A zero-initialised query residual, with every document pulled towards one direction u: d -> u + 0.05 (d - u).
    Cosine ranks documents almost as the frozen encoder does, while their effective rank collapses (the issue's
    head: RankMe 1.2 of the encoder's 269.5, a gain with p = 0.032 on seed 0 and losses on seeds 1 and 2)."""

    def __init__(self, dim: int, shrink: float = 0.05):
        super().__init__(dim)
        u = torch.randn(dim, generator=torch.Generator().manual_seed(4321))
        self.register_buffer("u", u / u.norm())
        self.shrink = shrink

    def encode_queries(self, q):
        return q + self.w(q)

    def encode_docs(self, d):
        return self.u + self.shrink * (d - self.u)


class RaisesInForward(LearnableScale):
    """A head whose query encoder raises once it trains (the untrained epoch-0 evaluation runs in eval mode)."""

    def encode_queries(self, q):
        if self.training:
            raise RuntimeError("boom in encode_queries")
        return q


class NoDefaultLoss(LearnableScale):
    """Trainable, and without default_losses: a candidate must name its losses."""

    default_losses: dict = {}


@pytest.fixture
def own_heads(monkeypatch):
    module = types.ModuleType("own_heads")

    @hookimpl
    def register_heads(register):
        register("nan_after", NanAfter)
        register("closed_gate", ClosedGate)
        register("shared_rotation", SharedRotation)
        register("eval_dropout", EvalDropout)
        register("nan_documents", NanDocuments)
        register("learnable_scale", LearnableScale)
        register("squeezed_documents", SqueezedDocuments)
        register("raises_in_forward", RaisesInForward)
        register("no_default_loss", NoDefaultLoss)

    module.register_heads = register_heads
    sys.modules["own_heads"] = module
    monkeypatch.setattr(hp, "_registry", hp.build_registry(extra_plugins=(module,)))
    yield
    sys.modules.pop("own_heads", None)


def judge(check, run):
    c = hp.get("checks", check).factory
    return c.run(types.SimpleNamespace(run=run, name="own", config=run.config), **c.defaults)


def test_a_loss_that_turns_nan_is_caught_at_its_step(own_heads, data_dir, tmp_path, monkeypatch, capsys):
    from harness.train import TrainConfig, train

    monkeypatch.setenv("HARNESS_PROGRESS_INTERVAL", "0")  # progress lines at every epoch (stderr is no terminal here)
    run = train(TrainConfig(head="nan_after", epochs=3, lr=1e-3, data_dir=str(data_dir), **QUICK), tmp_path).units["scifact"]
    lines = capsys.readouterr().err.splitlines()  # the epochs the stop skipped count as done: the run ends at 100%
    assert lines[-1].startswith("training nan_after (seed 0): done, 3/3 epochs (100%)"), lines
    assert run.stopped and run.stopped["epoch"] == 1 and run.stopped["component"] == "loss_total"
    assert run.stopped["step"] == 14  # the 15th training forward, counted from 0 (the probe runs in eval mode)
    json.loads((tmp_path / "scifact" / "telemetry.json").read_text())  # still strict JSON, written
    verdict = judge("finite", run)
    assert not verdict.passed and "step 14" in verdict.message and "epoch 1" in verdict.message, verdict.message


def test_a_head_that_does_nothing_is_caught_whatever_it_reports(own_heads, data_dir):
    from harness.train import TrainConfig, train

    run = train(TrainConfig(head="closed_gate", epochs=2, lr=1e-3, data_dir=str(data_dir), **QUICK)).merged()
    assert judge("nonzero_residuals", run).details.get("not_applicable")  # no aux: the residual check cannot see it
    verdict = judge("changes_ranking", run)
    assert not verdict.passed and "scifact" in verdict.message, verdict.message


def test_a_head_whose_dev_split_keeps_epoch_0_on_every_dataset_is_judged_there(own_heads, data_dir):
    """Trained on two datasets, judged as one candidate: the merged run holds only the selected epoch 0 of each
    unit. It once read as 'not trained', and changes_ranking was not applicable."""
    from harness.train import TrainConfig, train

    both = ["scifact", "nfcorpus"]
    result = train(TrainConfig(head="shared_rotation", epochs=2, lr=1e-3, data_dir=str(data_dir), select="dev",
                               **{**QUICK, "train": both, "eval": both}))
    assert [r.selected_epoch.epoch for r in result.units.values()] == [0, 0]
    run = result.merged()
    assert run.trained and run.last_trained_epoch == 2
    verdict = judge("changes_ranking", run)
    assert not verdict.passed and not verdict.details.get("not_applicable") and verdict.epoch == 0, verdict.message
    assert "the head does nothing: at epoch 0, selected on the dev split" in verdict.message, verdict.message
    assert "none of its 2 trained epochs beat the untrained head on the dev split" in verdict.message


def test_a_head_whose_scores_are_not_reproducible_is_caught(own_heads, data_dir):
    """Dropout left on at evaluation: a seeded run replays the same masks, so NDCG@10 and a regression baseline
    look stable; encoding twice in one process does not."""
    from harness.train import TrainConfig, train

    run = train(TrainConfig(head="eval_dropout", epochs=1, lr=1e-3, data_dir=str(data_dir), **QUICK)).merged()
    verdict = judge("reproducible", run)
    assert not verdict.passed and "not reproducible" in verdict.message, verdict.message
    assert run.reproducibility["changed"]["queries"] == run.reproducibility["vectors"]["queries"] == 300
    assert run.reproducibility["changed"]["documents"] == 0 and "training=self.training" in verdict.message
    # the same head without dropout gives the same vectors twice
    steady = train(TrainConfig(head="eval_dropout", head_options={"p": 0.0}, epochs=1, lr=1e-3, data_dir=str(data_dir),
                               **QUICK)).merged()
    verdict = judge("reproducible", steady)
    assert verdict.passed and steady.reproducibility["max_rel_diff"] == 0.0, verdict.message


def test_non_finite_retrieval_output_is_named_not_a_linear_algebra_error(own_heads, data_dir):
    from harness.measure import NonFiniteOutput
    from harness.train import TrainConfig, train

    with pytest.raises(NonFiniteOutput, match=r"encode_docs returned non-finite vectors in eval mode for \d+ of 5183 "
                                              r"scifact documents \(the first, row \d+, holds NaN values\)"):
        train(TrainConfig(head="nan_documents", epochs=1, lr=1e-3, data_dir=str(data_dir), **QUICK))


def test_steady_magnitude_growth_is_caught_before_the_ratio_bound(own_heads, data_dir):
    from harness.train import TrainConfig, train

    config = TrainConfig(head="learnable_scale", epochs=4, lr=8e-3, data_dir=str(data_dir), select="last", **QUICK)
    run = train(config).units["scifact"]
    norms = [e.q_norm["mean"] for e in run.epochs]
    assert all(b > a for a, b in zip(norms[1:], norms[2:])) and norms[-1] < 2 * norms[0]  # rising, under the 2x ratio
    verdict = judge("bounded_norms", run)  # the norm ratio alone (1.67x < 2x) would let it through at epoch 4
    assert not verdict.passed and verdict.epoch <= 4, (norms, verdict.message)
    assert "trend" in json.dumps(verdict.details), verdict.details  # the rising norms' fitted trend is reported


def test_a_collapsed_head_is_caught_on_every_seed_while_it_ranks_like_the_encoder(own_heads, data_dir):
    """One seed once accepted a head that maps every document to nearly one vector; its cosine ranking stays
    close to the frozen encoder's, so NDCG@10 alone cannot tell. no_collapse is judged on every seed."""
    from harness.train import TrainConfig, train

    for seed in (0, 1, 2):
        run = train(TrainConfig(head="squeezed_documents", epochs=2, lr=1e-3, data_dir=str(data_dir), seed=seed,
                                **QUICK)).units["scifact"]
        untrained = run.epochs[0]
        assert untrained.top10_overlap["scifact"] > 0.9, untrained.top10_overlap  # it ranks like the encoder
        verdict = judge("no_collapse", run)
        assert not verdict.passed and verdict.measured < 0.2, (seed, verdict.message)  # 10% of the encoder's
        assert "RankMe" in verdict.message, verdict.message


def test_a_head_that_raises_is_named_with_its_file_line_and_plugin(own_heads, tmp_path):
    """A head's exception fails its trained checks with a message saying where: file, line, function, plugin."""
    from harness.cli import main

    suite = tmp_path / "raises.toml"
    suite.write_text("""version = 1
name = "raises"
encoder = "minilm"
datasets = ["scifact"]
[train]
datasets = ["scifact"]
epochs = 1
lr_grid = []
[checks.finite]
[[candidates]]
name = "raiser"
head = "raises_in_forward"
""")
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-github-summary"]) == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    error = report["candidates"][0]["train_error"]
    assert error.startswith("training 'raiser' failed: RuntimeError: boom in encode_queries (raised at "), error
    assert f"{__file__}:" in error and "in encode_queries; head 'raises_in_forward' of plugin 'own_heads')" in error, error

    # the harness's own error (a batch larger than the training set) blames no plugin
    suite.write_text(suite.read_text().replace("lr_grid = []", "lr_grid = []\nbatch_size = 60000"))
    assert main(["run", str(suite), "--out", str(tmp_path / "out2"), "--no-github-summary"]) == 1
    error = json.loads((tmp_path / "out2" / "report.json").read_text())["candidates"][0]["train_error"]
    assert "fewer than batch_size" in error and "raised at" not in error, error


def test_validate_runs_one_forward_pass_and_names_a_head_that_raises(own_heads, tmp_path, capsys):
    """`harness validate` builds each head at the encoder's width and runs it once, so a head that raises is
    refused in one line (file, line, mode) before any run trains it."""
    from harness.cli import main

    suite = tmp_path / "raises.toml"
    suite.write_text('version = 1\nname = "raises"\nencoder = "minilm"\ndatasets = ["scifact"]\n[checks.finite]\n'
                     '[[candidates]]\nname = "raiser"\nhead = "raises_in_forward"\n')
    assert main(["validate", str(suite)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"candidate 'raiser': head 'raises_in_forward' raised on a forward pass (training mode, 8 random 384-d vectors): " \
           f"RuntimeError: boom in encode_queries (raised at {__file__}:" in err, err


def test_validate_refuses_a_retrieval_path_that_is_not_finite_or_not_reproducible(own_heads, tmp_path, capsys):
    from harness.cli import main

    for head, expected in (("nan_documents", "encode_docs returned non-finite vectors in eval mode for 1 of 8 random "
                                             "documents"),
                           ("eval_dropout", "encode_queries gave other vectors for the same 8 queries called twice in eval mode")):
        suite = tmp_path / f"{head}.toml"
        suite.write_text(f'version = 1\nname = "v"\nencoder = "minilm"\ndatasets = ["scifact"]\n[checks.finite]\n'
                         f'[[candidates]]\nname = "c"\nhead = "{head}"\n')
        assert main(["validate", str(suite)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"candidate 'c': head '{head}'" in err and expected in err, err


def test_validate_runs_the_losses_on_the_head_s_output(own_heads, tmp_path, capsys):
    """A loss that cannot read the head's output, or a trainable head with no loss at all, used to pass
    `harness validate` and fail only in `harness run`, after the encode. Both are one line at validate now."""
    from harness.cli import main

    suite = tmp_path / "losses.toml"
    head = 'version = 1\nname = "losses"\nencoder = "minilm"\ndatasets = ["scifact"]\n[checks.finite]\n[[candidates]]\nname = "c"\n'
    suite.write_text(head + 'head = "adapter"\nlosses = { predictive = { source = "prediction" } }\n')
    assert main(["validate", str(suite)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "candidate 'c': loss 'predictive' raised on head 'adapter''s output (training mode, 8 random 384-d pairs, " \
           "1 hard negative(s) each): ValueError: predictive: source='prediction' needs a head that emits aux['prediction']" in err, err

    suite.write_text(head + 'head = "no_default_loss"\n')
    assert main(["validate", str(suite)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "candidate 'c': head 'no_default_loss' is trainable but has no training loss" in err, err
    suite.write_text(head + 'head = "no_default_loss"\npretrain = { losses = { barlow = { weight = 1.0 } }, epochs = 1 }\n')
    assert main(["validate", str(suite)]) == 2  # pretraining alone: the training stage still has no loss
    assert "is trainable but has no training loss" in " ".join(capsys.readouterr().err.split())

    # a loss that does not reach the head's parameters on its own (weight 0, the side the head leaves alone) is
    # fine inside a sum that does: validate backpropagates the weighted sum, as a training step does
    suite.write_text(head + 'head = "adapter"\nlosses = { infonce_cos = 1.0, isotropy = { weight = 0, on = "doc" } }\n')
    assert main(["validate", str(suite)]) == 0, capsys.readouterr().err

    suite.write_text(head + 'head = "adapter"\nlosses = { predictive = { source = "query" } }\n')
    assert main(["validate", str(suite)]) == 0  # the same loss on what the head emits
