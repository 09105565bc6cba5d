"""Suite files: the shipped suites load, and every malformed one is refused naming the file, key and choices."""
from pathlib import Path

import pytest

from harness.suite import SuiteError, load_suite

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """\
version = 1
name = "tiny"
encoder = "minilm"
datasets = ["scifact"]
[train]
epochs = 1
[checks.finite]
[checks.bounded_norms]
max_norm_growth = 3.0
[[candidates]]
name = "identity"
head = "identity"
expect_fail = ["bounded_norms"]
"""


def write(tmp_path, text, name="suite.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_suites_load():
    smoke = load_suite(ROOT / "suites" / "smoke.toml")
    assert smoke.encoder == "minilm" and not smoke.requires_gpu
    names = [c.name for c in smoke.candidates]
    assert {"identity", "asym-dot", "asym-cos", "respred-seed004"} <= set(names)
    assert {"nonzero_residuals", "no_degradation"} <= set(smoke.candidate("respred-seed004").expect_fail)
    assert "bounded_norms" in smoke.candidate("asym-dot").expect_fail
    assert "bounded_norms" not in smoke.candidate("asym-cos").expect_fail
    assert set(smoke.candidate("identity").expect_fail) == {"beats_baseline"}
    gpu = load_suite(ROOT / "suites" / "gpu_suite.toml")
    assert gpu.encoder == "mpnet" and gpu.requires_gpu and set(gpu.datasets) == {"scifact", "nfcorpus"}
    assert gpu.checks["beats_baseline"]["encoder"] == "mpnet"
    assert smoke.seeds == gpu.seeds == [0, 1, 2]  # both shipped suites judge every candidate on three seeds


def test_thresholds_merge_suite_and_candidate(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL + "[candidates.checks.bounded_norms]\nmax_norm = 5.0\n"))
    spec = suite.candidate("identity")
    assert spec.checks["bounded_norms"] == {"max_norm_growth": 3.0, "max_norm": 5.0}
    assert spec.expect_fail == {"bounded_norms": ""}


def test_a_loss_given_as_a_bare_weight_is_that_loss_s_weight(tmp_path):
    """`losses = { infonce_cos = 0.5 }` as `--loss infonce_cos:0.5` says on the command line (it was refused)."""
    text = MINIMAL.replace('head = "identity"', 'head = "adapter"\nlosses = { infonce_cos = 0.5, isotropy = { weight = 2 } }')
    spec = load_suite(write(tmp_path, text)).candidate("identity")
    assert spec.losses == {"infonce_cos": {"weight": 0.5}, "isotropy": {"weight": 2}}
    with pytest.raises(SuiteError, match=r"losses\.infonce_cos': expected a weight or a table like"):
        load_suite(write(tmp_path, text.replace("infonce_cos = 0.5", 'infonce_cos = "0.5"')))


def test_train_config_is_accepted_by_the_trainer(tmp_path):
    from harness.train import TrainConfig

    suite = load_suite(write(tmp_path, MINIMAL))
    config = suite.train_config(suite.candidates[0], seed=7)
    assert config["seed"] == 7 and config["eval"] == ["scifact"] and config["train"] == ["scifact"] and config["epochs"] == 1
    TrainConfig.from_dict(config)


@pytest.mark.parametrize(
    "edit, key, expected",
    [
        (lambda t: t.replace("version = 1\n", ""), "version", "add `version = 1`"),
        (lambda t: t.replace("version = 1", "version = 9"), "version", "Valid choices: 1"),
        (lambda t: t.replace('head = "identity"', 'head = "identiy"'), "candidates[0] (identity).head", "Did you mean 'identity'"),
        (lambda t: t.replace("[checks.finite]", "[checks.finit]"), "checks.finit", "Valid choices: beats_baseline"),
        (lambda t: t.replace("max_norm_growth = 3.0", "max_norm_grwth = 3.0"), "checks.bounded_norms.max_norm_grwth", "max_norm_growth"),
        (lambda t: t.replace("max_norm_growth = 3.0", 'max_norm_growth = "big"'), "checks.bounded_norms.max_norm_growth", "a number"),
        (lambda t: t.replace('expect_fail = ["bounded_norms"]', 'expect_fail = ["beats_baseline"]'), "candidates[0] (identity).expect_fail", "not a check run"),
        (lambda t: t + '[[candidates]]\nname = "identity"\nhead = "identity"\n', "candidates[1].name", "used twice"),
        (lambda t: t.replace('encoder = "minilm"', 'encoder = "minilm"\ncolour = "red"'), "colour", "Valid choices: baselines_dir"),
        (lambda t: t.replace("epochs = 1", "epochs = -1"), "train.epochs", "must be an integer >= 0"),
        (lambda t: t.replace('datasets = ["scifact"]', 'datasets = ["scifakt"]'), "datasets[0]", "Did you mean 'scifact'"),
        (lambda t: t + "losses = { infonce_dott = {} }\n", "candidates[0] (identity).losses.infonce_dott", "Did you mean 'infonce_dot'"),
        (lambda t: t.replace("[[candidates]]", "[[candidates]]\nhead_options = { nope = 1 }"), "head_options", "no option 'nope'"),
        (lambda t: t.replace('name = "identity"', 'name = ".."'), "candidates[0].name", "not only dots"),
        (lambda t: t.replace('epochs = 1', 'epochs = 1\nlr = 1e20'), "train.lr", "<= 10"),
        (lambda t: t.replace("[checks.finite]", "[checks.finite]\n[checks.beats_baseline]").replace(
            'expect_fail = ["bounded_norms"]', '[candidates.expect_fail]\nbeats_baseline = { reason = "x", strict = false }'),
         "candidates[0] (identity).expect_fail.beats_baseline.strict", "judged once, on the seeds pooled"),
    ],
)
def test_bad_suites_name_file_key_and_choices(tmp_path, edit, key, expected):
    path = write(tmp_path, edit(MINIMAL))
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert str(path) in text and key in text and expected in text, text


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(SuiteError, match="not valid TOML"):
        load_suite(write(tmp_path, "version = = 1"))
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "nope.toml")


def test_a_non_strict_expected_failure_is_recorded(tmp_path):
    text = MINIMAL.replace('expect_fail = ["bounded_norms"]',
                           '[candidates.expect_fail]\nbounded_norms = { reason = "seeds 6 and 7 of 10", strict = false }')
    spec = load_suite(write(tmp_path, text)).candidate("identity")
    assert spec.expect_fail == {"bounded_norms": "seeds 6 and 7 of 10"} and spec.nonstrict == {"bounded_norms"}
