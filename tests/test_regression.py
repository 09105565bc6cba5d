"""Regression baselines of accepted candidates: created by accepting, missing -> the command, wrecked -> caught."""
import json
import textwrap

import pytest

from harness.accept import accept
from harness.gate import BaselineStore
from harness.regression import candidate_path, load
from harness.runner import SeededGate
from harness.suite import load_suite

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def write_suite(folder, lr: float, select: str = "dev", patience: int = 2):
    path = folder / "reg.toml"
    path.write_text(textwrap.dedent(f"""
        version = 1
        name = "reg"
        encoder = "minilm"
        datasets = ["scifact"]
        seeds = [0]
        baselines_dir = "{folder / 'baselines'}"
        [train]
        datasets = ["scifact"]
        epochs = 3
        patience = {patience}
        select = "{select}"
        lr = {lr}
        [checks.finite]
        [checks.no_regression]
        [checks.beats_baseline]
        [[candidates]]
        name = "adapter"
        head = "adapter"
        losses = {{ infonce_cos = {{ weight = 1.0, temperature = 0.05 }} }}
    """))
    return path


@pytest.fixture(scope="module")
def accepted(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("reg")
    (folder / "baselines").mkdir()
    for f in (ROOT / "baselines" / "minilm").glob("scifact-*.json"):  # the frozen baseline beats_baseline needs
        (folder / "baselines" / "minilm").mkdir(exist_ok=True)
        (folder / "baselines" / "minilm" / f.name).write_bytes(f.read_bytes())
    suite = load_suite(write_suite(folder, 1e-3))
    result = accept(suite, "adapter", data_dir=str(data_dir), progress=False)
    return folder, suite, result


def gate(suite, data_dir, regenerate=False):
    g = SeededGate(suite, suite.candidate("adapter"), BaselineStore(suite.baselines_dir, str(data_dir)), suite.seeds,
                   data_dir=str(data_dir), progress=False, regenerate=regenerate)
    return g.check("no_regression")


def test_a_missing_candidate_baseline_fails_with_the_command_that_creates_it(tmp_path, data_dir):
    (tmp_path / "baselines").mkdir()
    suite = load_suite(write_suite(tmp_path, 1e-3))
    outcome = gate(suite, data_dir)
    assert outcome.outcome == "fail"
    assert "harness baselines update --suite" in outcome.message and "--candidate adapter" in outcome.message


def test_accepting_stores_per_query_scores_with_provenance(accepted):
    folder, suite, result = accepted
    assert result.refused == [] and result.path == candidate_path(suite.baselines_dir, "reg", "adapter")
    stored = load(result.path)
    assert stored.seeds() == [0] and len(stored.per_query_ndcg10["0"]["scifact"]) == 300
    prov = stored.provenance
    assert prov["head"] == "adapter" and prov["encoder_sha256"] and prov["files_sha256"]["scifact"] and prov["config_sha256"]
    assert result.ndcg10["scifact"] > 0.66  # it beat the frozen encoder (0.6451) to be accepted


def test_the_same_candidate_passes_its_own_baseline(accepted, data_dir):
    _, suite, _ = accepted
    assert gate(suite, data_dir).outcome == "pass"


def test_a_wrecked_configuration_fails_no_regression_naming_the_drop(accepted, data_dir):
    folder, _, result = accepted
    wrecked = load_suite(write_suite(folder, 5.0, select="last", patience=0))  # a learning rate that destroys it
    outcome = gate(wrecked, data_dir)
    assert outcome.outcome == "fail", outcome.message
    assert "scifact NDCG@10" in outcome.message and "worst queries" in outcome.message
    assert "config_sha256" in outcome.message  # says what changed since the baseline was stored
    before = result.path.read_bytes()
    regenerated = gate(wrecked, data_dir, regenerate=True)
    assert regenerated.outcome == "fail" and "rewritten" in regenerated.message  # still reports, then rewrites
    assert result.path.read_bytes() != before
    assert json.loads(result.path.read_text())["provenance"]["train"]["lr"] == 5.0


def test_a_seed_that_was_not_stored_fails_with_the_command_that_stores_it(accepted, data_dir):
    folder, _, _ = accepted
    suite = load_suite(write_suite(folder, 1e-3))
    suite.seeds = [4]
    outcome = gate(suite, data_dir)
    assert outcome.outcome == "fail" and "no regression baseline stored for seed 4" in outcome.message
    assert "--seeds 0,4" in outcome.message


def test_another_seed_is_no_provenance_change():
    """A baseline stored for seeds 0-2 records seed 0's training settings; seed 1's run said "(changed since it was
    stored: train)" although nothing had changed (seen on the GPU suite). A changed setting is still named."""
    from harness.regression import changed_fields

    stored = {"config_sha256": "a", "train": {"seed": 0, "lr": 1e-3, "device": "cpu", "epochs": 20}, "seeds": [0, 1, 2]}
    assert changed_fields(stored, {**stored, "train": {**stored["train"], "seed": 1, "device": "cuda"}, "seeds": [1]}) == []
    assert changed_fields(stored, {**stored, "train": {**stored["train"], "seed": 1, "epochs": 10}}) == ["train"]
    assert changed_fields(stored, {**stored, "config_sha256": "b"}) == ["config_sha256"]
