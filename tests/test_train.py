"""The training loop on real SciFact (MiniLM cached embeddings): determinism, telemetry, files, CLI, errors."""
import json
import math

import pytest
import torch

from harness.telemetry import load_run, run_from_dict, run_to_dict
from harness.train import TrainConfig, load_head
from harness.train import train as train_units

# These tests look at one head's dynamics epoch by epoch: every pair, in-batch negatives, no dev split, the last
# epoch (the pre-protocol loop; tests/test_protocol.py covers dev selection, hard negatives and units).
SMALL = dict(train=["scifact"], eval=["scifact"], max_pairs=256, batch_size=32, probe_pairs=128, samples_per_epoch=3,
             select="last", patience=0, dev_fraction=0.0, hard_negatives=0, positives="all", weight_decay=0.0)


def train(config, out=None, **kwargs):
    """One unit's run (SMALL trains one dataset, so one unit); with ``out``, files land in ``out/scifact``."""
    return train_units(config, out, **kwargs).units["scifact"]


def without_timing(run) -> dict:
    d = run_to_dict(run)
    d.pop("checkpoint"), d.pop("telemetry_path")
    d["protocol"].pop("seconds", None)
    for e in d["epochs"]:
        e.pop("seconds")
    return d


@pytest.fixture(scope="module")
def asym_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("asym")
    config = TrainConfig(head="asymmetric", losses={"infonce_dot": {"weight": 1.0}}, epochs=2, **SMALL)
    return train(config, out, progress=False), out


def test_two_runs_give_identical_telemetry(asym_run):
    run, _ = asym_run
    again = train(TrainConfig(head="asymmetric", losses={"infonce_dot": {"weight": 1.0}}, epochs=2, **SMALL), progress=False)
    assert without_timing(again) == without_timing(run)
    other_seed = train(TrainConfig(head="asymmetric", losses={"infonce_dot": {"weight": 1.0}}, epochs=2, seed=1, **SMALL), progress=False)
    assert without_timing(other_seed)["epochs"][1]["loss"] != without_timing(run)["epochs"][1]["loss"]


def test_every_epoch_records_the_documented_telemetry(asym_run):
    run, _ = asym_run
    assert [e.epoch for e in run.epochs] == [0, 1, 2]
    assert run.similarity == "dot"
    for e in run.epochs:
        assert set(e.loss) == {"total", "infonce_dot"}
        assert set(e.q_norm) == set(e.d_norm) == {"mean", "max", "std"}
        assert e.q_norm["max"] >= e.q_norm["mean"] > 0
        for value in (e.pos_sim, e.neg_sim, e.grad_norm, e.rankme, e.alignment, e.uniformity):
            assert math.isfinite(value)
        assert 1 <= e.rankme <= 384
        assert 0 <= e.alignment <= 4 and e.uniformity <= 0
        assert set(e.ndcg10) == {"scifact"} and 0 <= e.ndcg10["scifact"] <= 1
        assert len(e.per_query_ndcg10["scifact"]) == 300
        assert 0 <= e.top10_overlap["scifact"] <= 1
        assert e.residual is None  # not a residual head
    assert run.epochs[0].steps == [] and len(run.epochs[1].steps) >= 3
    assert {"loss_total", "loss_infonce_dot", "grad_norm", "pos_sim", "q_norm_mean"} <= set(run.epochs[1].steps[0])
    # training lowers the loss on the probe pairs, and two separate random projections start with NDCG ~0
    assert run.epochs[2].loss["total"] < run.epochs[0].loss["total"]
    assert run.epochs[0].ndcg10["scifact"] < 0.05 < run.epochs[2].ndcg10["scifact"]
    # the frozen baseline is MiniLM on SciFact test
    assert run.baseline_ndcg10["scifact"] == pytest.approx(0.645, abs=0.01)
    assert run.best_epoch.epoch == max(run.epochs, key=lambda e: e.ndcg10["scifact"]).epoch


def test_telemetry_json_and_checkpoint_round_trip(asym_run):
    run, out = asym_run
    out = out / "scifact"  # one folder per unit
    assert run.telemetry_path == str(out / "telemetry.json") and run.checkpoint == str(out / "head.safetensors")
    data = json.loads((out / "telemetry.json").read_text())  # strict JSON
    assert data["config"]["head"] == "asymmetric" and len(data["epochs"]) == 3
    assert without_timing(load_run(out / "telemetry.json")) == without_timing(run)
    assert without_timing(run_from_dict(run_to_dict(run))) == without_timing(run)
    # the checkpoint is the selected epoch (select = "last" here): re-scoring it reproduces that epoch's NDCG@10
    from harness.train import evaluate_head, load_eval

    head = load_head(out / "head.safetensors")
    sets = load_eval(TrainConfig(**{**SMALL, "eval": ["scifact"]}), torch.Generator().manual_seed(0))
    again = evaluate_head(head, sets, torch.device("cpu"))
    assert again["ndcg10"]["scifact"] == pytest.approx(run.selected_epoch.ndcg10["scifact"], abs=1e-9)
    assert (out / "head_last.safetensors").is_file()


@pytest.mark.data
def test_a_frozen_head_records_only_epoch_zero_equal_to_the_baseline():
    run = train(TrainConfig(head="identity", epochs=3, **SMALL), progress=False)
    assert len(run.epochs) == 1
    e = run.epochs[0]
    assert e.ndcg10 == run.baseline_ndcg10 and e.per_query_ndcg10 == run.baseline_per_query_ndcg10
    assert e.top10_overlap["scifact"] == 1.0 and e.loss == {} and math.isnan(e.grad_norm)
    assert e.rankme == pytest.approx(run.baseline_rankme)


@pytest.mark.data
def test_residual_head_reports_alpha_delta_and_correction():
    run = train(TrainConfig(head="respred", epochs=1, **SMALL), progress=False)
    assert run.config["losses"] == {"isotropy": {"weight": 1.5}, "predictive": {"weight": 1.2}, "residual_l2": {"weight": 0.01}}
    r0, r1 = run.epochs[0].residual, run.epochs[1].residual
    assert set(r0) == {"delta_mean", "delta_max", "alpha", "correction_abs_mean", "correction_max", "correction_rel"}
    assert r0["alpha"] == pytest.approx(0.1) and r1["alpha"] != r0["alpha"]  # learnable
    assert 0 < r0["delta_mean"] <= r0["delta_max"] <= 1  # tanh
    assert r0["correction_abs_mean"] == pytest.approx(r0["alpha"] * r0["delta_mean"], rel=1e-5)
    assert set(run.epochs[1].loss) == {"total", "isotropy", "predictive", "residual_l2"}
    total = 1.5 * run.epochs[1].loss["isotropy"] + 1.2 * run.epochs[1].loss["predictive"] + 0.01 * run.epochs[1].loss["residual_l2"]
    assert run.epochs[1].loss["total"] == pytest.approx(total, rel=1e-5)


def test_max_grad_norm_clips_every_step(asym_run):
    """Clipping to a norm far below AdamW's eps leaves steps of ~0 (the unclipped run's loss falls by > 10%);
    telemetry keeps reporting the gradient norm before clipping."""
    run, _ = asym_run
    clipped = train(TrainConfig(head="asymmetric", losses={"infonce_dot": {"weight": 1.0}}, epochs=1, max_grad_norm=1e-12, **SMALL), progress=False)
    assert clipped.config["max_grad_norm"] == 1e-12
    assert clipped.epochs[1].loss["total"] == pytest.approx(clipped.epochs[0].loss["total"], rel=1e-3)
    assert run.epochs[1].loss["total"] < 0.9 * run.epochs[0].loss["total"]
    assert clipped.epochs[1].steps[0]["grad_norm"] > 1e-3
    with pytest.raises(ValueError, match=r"max_grad_norm must be"):
        TrainConfig.from_dict({"head": "asymmetric", "max_grad_norm": 0})


@pytest.mark.data
def test_projected_residual_head_reports_the_correction_relative_to_the_projected_query():
    """respred with projection=True: ||alpha*delta|| / ||z_q|| (the projected query it is added to), not / ||q||."""
    head_options = {"projection": True, "hidden": "2x", "dropout": 0.1, "score_with": "projection", "similarity": "dot"}
    losses = {"isotropy": {"weight": 1.5, "form": "cov", "on": "joint"}, "predictive": {"weight": 1.2, "source": "prediction", "stop_grad": True},
              "residual_l2": {"weight": 0.01, "reduction": "row_sum"}}
    run = train(TrainConfig(head="respred", head_options=head_options, losses=losses, epochs=1, max_grad_norm=1.0, **SMALL), progress=False)
    assert run.similarity == "dot" and set(run.epochs[1].loss) == {"total", "isotropy", "predictive", "residual_l2"}
    from harness.train import build_head, load_pairs

    queries = load_pairs(TrainConfig(**SMALL), torch.Generator().manual_seed(0)).queries[:64]
    torch.manual_seed(0)
    fresh = build_head("respred", 384, head_options).eval()  # the run's head at epoch 0
    with torch.no_grad():
        z = fresh.projection(queries)
        corr = fresh.residual(z)[1].norm(dim=-1).mean()
    assert z.norm(dim=-1).mean() < 0.7  # a random projection shrinks unit vectors, so the two ratios differ
    r0 = run.epochs[0].residual
    assert r0["correction_rel"] == pytest.approx((corr / z.norm(dim=-1).mean()).item(), rel=0.2)
    assert r0["correction_rel"] > 1.5 * (corr / queries.norm(dim=-1).mean()).item()


@pytest.mark.data
def test_pretraining_stage_comes_first_and_starts_from_the_frozen_encoder():
    config = TrainConfig.from_dict({**SMALL, "head": "barlow", "losses": {"infonce_cos": 1.0},
                                    "pretrain": {"losses": {"barlow": {"weight": 1.0, "lambd": 0.005}}, "epochs": 1}, "epochs": 1})
    run = train(config, progress=False)
    assert [e.epoch for e in run.epochs] == [0, 1, 2]
    assert run.epochs[0].ndcg10 == run.baseline_ndcg10  # identity-initialised backbone, cosine
    assert set(run.epochs[1].loss) == {"total", "barlow", "infonce_cos"}
    assert run.epochs[1].loss["total"] == pytest.approx(run.epochs[1].loss["barlow"])  # pretraining stage
    assert run.epochs[2].loss["total"] == pytest.approx(run.epochs[2].loss["infonce_cos"])  # ranking stage


@pytest.mark.data
def test_training_off_a_terminal_prints_lines_over_the_whole_run(monkeypatch, capsys):
    """A CI log hears from a long training run: lines name the unit, lr and epoch, and count every epoch of the
    run's budget (units x lrs x epochs); epochs that early stopping skips count at once, so the run ends at 100%."""
    monkeypatch.setenv("HARNESS_PROGRESS_INTERVAL", "0")  # a line at every epoch (pytest's stderr is no terminal)
    config = TrainConfig(head="asymmetric", head_options={"similarity": "cos"}, losses={"infonce_cos": {"weight": 1.0}},
                         epochs=6, lr_grid=[1e-4, 1.0], **{**SMALL, "select": "dev", "patience": 1, "dev_fraction": 0.2})
    result = train_units(config, label="training probe (seed 0)")
    err = capsys.readouterr().err.splitlines()
    epochs_run = [t["epochs_run"] for t in result.units["scifact"].protocol["trials"]]
    assert min(epochs_run) < 6, epochs_run  # lr 1.0 overshoots: early stopping skips epochs
    assert any(line.startswith("training probe (seed 0), scifact lr 0.0001: epoch 1/6: 1/12 epochs (8%)") for line in err), err
    assert err[-1].startswith("training probe (seed 0): done, 12/12 epochs (100%) in "), (epochs_run, err)
    assert train_units(config, progress="off") and not capsys.readouterr().err  # off: silent


def test_config_errors_name_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown key 'epoch'.*Did you mean 'epochs'.*Valid keys: encoder, head"):
        TrainConfig.from_dict({"head": "respred", "epoch": 3})
    with pytest.raises(ValueError, match=r"losses.infonce_cos.weight must be a finite number"):
        TrainConfig.from_dict({"head": "asymmetric", "losses": {"infonce_cos": {"weight": "high"}}})
    with pytest.raises(ValueError, match=r"pretrain has unknown keys \['loss'\]"):
        TrainConfig.from_dict({"head": "barlow", "pretrain": {"loss": {"barlow": 1}}})
    with pytest.raises(ValueError, match=r"epochs must be an integer >= 0"):
        TrainConfig.from_dict({"head": "barlow", "epochs": -1})
    assert TrainConfig.from_dict({"head": "x", "train": "scifact, nfcorpus"}).train == ["scifact", "nfcorpus"]


@pytest.mark.data
def test_cli_trains_prints_the_epoch_table_and_writes_files(tmp_path, capsys):
    from harness.cli import main

    code = main(["train", "--head", "respred", "--head-option", "tanh=false", "--loss", "isotropy:1.5,predictive:1.2",
                 "--train", "scifact", "--eval", "scifact", "--epochs", "1", "--max-pairs", "128", "--batch-size", "32",
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "scifact NDCG@10" in out and "selected epoch" in out and "|αδ|/|q|" in out
    run = load_run(tmp_path / "scifact" / "telemetry.json")
    assert run.config["head_options"] == {"tanh": False}
    assert run.config["losses"] == {"isotropy": {"weight": 1.5}, "predictive": {"weight": 1.2}}


@pytest.mark.parametrize("argv, message", [
    (["--head", "respredd"], "unknown head 'respredd'"),
    (["--head", "asymmetric", "--loss", "infonce"], "unknown loss 'infonce'"),
    (["--head", "asymmetric", "--loss", "infonce_cos", "--loss-option", "infonce_cos.temp=1"], "no option 'temp'"),
    (["--head", "respred", "--head-option", "tanhh=false"], "no option 'tanhh'"),
    (["--head", "respred", "--epochs", "0", "--max-pairs", "lots"], "--max-pairs must be an integer or 'all'"),
])
def test_cli_errors_exit_2_with_a_clear_message(argv, message, capsys):
    from harness.cli import main

    assert main(["train", "--train", "scifact", "--eval", "scifact", *argv]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
