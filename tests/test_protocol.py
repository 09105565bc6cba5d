"""The training protocol: the dev split, hard negatives, masking, selection on dev, units, and the positive control."""
import pytest
import torch

from harness.config import ConfigError, TrainConfig
from harness.protocol import TrainingSet, split_dev, units


# -- fast tier: no data --------------------------------------------------------------------------
def test_dev_split_is_deterministic_disjoint_and_seeded():
    ids = [f"q{i}" for i in range(100)]
    train_a, dev_a = split_dev(ids, 0.2, seed=0, dataset="scifact")
    train_b, dev_b = split_dev(list(reversed(ids)), 0.2, seed=0, dataset="scifact")
    assert (train_a, dev_a) == (train_b, dev_b)  # input order does not matter, the seed does
    assert len(dev_a) == 20 and not set(dev_a) & set(train_a) and sorted(train_a + dev_a) == sorted(ids)
    assert split_dev(ids, 0.2, seed=1, dataset="scifact")[1] != dev_a
    assert split_dev(ids, 0.2, seed=0, dataset="nfcorpus")[1] != dev_a
    assert split_dev(ids, 0.0, seed=0, dataset="x") == (sorted(ids), [])


def test_units_per_dataset_and_pooled():
    c = TrainConfig(train=["scifact", "nfcorpus"], eval=["scifact", "nfcorpus"])
    assert [(u.name, u.train, u.eval) for u in units(c)] == [("scifact", ["scifact"], ["scifact"]), ("nfcorpus", ["nfcorpus"], ["nfcorpus"])]
    c = TrainConfig(train=["scifact", "nfcorpus"], eval=["scifact", "nfcorpus"], mode="pooled")
    assert [(u.name, u.train) for u in units(c)] == [("pooled", ["scifact", "nfcorpus"])]


@pytest.mark.parametrize("bad, key", [
    ({"mode": "both"}, "mode"), ({"select": "best"}, "select"), ({"dev_fraction": 0.0}, "dev_fraction"),
    ({"lr": float("inf")}, "lr"), ({"lr_grid": [1e-3, float("nan")]}, "lr_grid"), ({"patience": -1}, "patience"),
    ({"epochs": 10**9}, "epochs"), ({"weight_decay": -0.1}, "weight_decay"), ({"batch_size": 1}, "batch_size"),
    ({"seed": -1}, "seed"), ({"max_grad_norm": "x"}, "max_grad_norm"), ({"eval": ["trec"], "train": ["scifact"]}, "eval"),
])
def test_protocol_settings_are_validated_with_their_key(bad, key):
    with pytest.raises(ConfigError) as exc:
        TrainConfig.from_dict({"train": ["scifact"], "eval": ["scifact"], **bad})
    assert exc.value.key == key


def _toy_set() -> TrainingSet:
    positives = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([1])]
    negatives = torch.tensor([[3, -1, 4], [-1, -1, -1], [0, 5, -1]])
    return TrainingSet(torch.randn(3, 4), torch.randn(6, 4), positives, negatives,
                       torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2, 1]))


def test_in_batch_columns_that_are_positives_of_the_row_are_masked():
    t = _toy_set()
    qi = torch.tensor([0, 1, 2])
    cols = torch.tensor([0, 2, 1, 3, 5, 1])  # the rows' positives, then negatives (one is query 0's positive 1)
    mask = t.exclude(qi, cols)
    assert mask.tolist() == [
        [False, False, True, False, False, True],   # query 0: doc 1 (column 2 and 5) is its positive
        [False, False, False, False, False, False],
        [False, False, False, False, False, True],  # query 2: its own positive elsewhere is masked, not its diagonal
    ]


def test_negatives_come_from_the_mined_list_or_random_when_none():
    t = _toy_set()
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([t.sample_negatives(torch.tensor([0, 2]), 4, gen) for _ in range(20)])
    assert set(draws[0::2].flatten().tolist()) <= {3, 4} and set(draws[1::2].flatten().tolist()) <= {0, 5}
    assert t.sample_negatives(torch.tensor([1]), 3, gen).shape == (1, 3)


def test_one_positive_per_query_per_epoch():
    t = _toy_set()
    qi, di = t.epoch("one_per_query", torch.Generator().manual_seed(0))
    assert sorted(qi.tolist()) == [0, 1, 2]
    for q, d in zip(qi.tolist(), di.tolist()):
        assert d in t.positives[q].tolist()
    qi, di = t.epoch("all", torch.Generator().manual_seed(0))
    assert len(qi) == 4


# -- data tier: real SciFact, cached MiniLM embeddings ------------------------------------------
def test_dev_split_never_holds_a_test_query_and_is_identical_across_runs(data_dir):
    from harness import sources
    from harness.protocol import build_unit

    config = TrainConfig(train=["scifact"], eval=["scifact"], data_dir=str(data_dir), seed=3)
    unit = units(config)[0]
    a = build_unit(config, unit, torch.Generator().manual_seed(3))
    b = build_unit(config, unit, torch.Generator().manual_seed(3))
    dev = a[0].info["dev_ids"]["scifact"]
    assert dev == b[0].info["dev_ids"]["scifact"] and len(dev) == round(0.2 * 809)
    test_queries = set(sources.qrels("scifact", str(data_dir), "test"))
    assert not set(dev) & test_queries
    assert a[0].info["datasets"]["scifact"]["train_queries"] + len(dev) == 809
    neg = a[0].negatives
    assert neg is not None and (neg >= 0).sum(1).float().mean() > 40  # most of the frozen top 50 are unjudged


def test_selection_reads_dev_never_test(data_dir):
    """The selected epoch is the dev-best one; test NDCG@10 is recorded but decides nothing."""
    from harness.train import train

    config = TrainConfig(head="adapter", train=["scifact"], eval=["scifact"], data_dir=str(data_dir), epochs=4,
                         patience=0, lr=1e-3)
    run = train(config, progress=False).units["scifact"]
    dev = [sum(e.dev_ndcg10.values()) for e in run.epochs]
    assert run.selected == max(range(len(dev)), key=lambda i: (dev[i], -i))
    assert run.protocol["split"]["scifact"]["dev_queries"] == 162 and run.protocol["select"] == "dev"
    last = train(TrainConfig(**{**config.to_dict(), "select": "last"}), progress=False).units["scifact"]
    assert last.selected == 4


@pytest.mark.parametrize("head, losses", [("adapter", None), ("respred", {"predictive": {"weight": 1.0}, "isotropy": {"weight": 0.5}})])
def test_an_lr_grid_keeps_the_chosen_trial_s_telemetry_exactly_as_a_single_lr_run_records_it(data_dir, head, losses):
    """With a grid, trials record dev NDCG@10 only and the chosen one's telemetry is measured afterwards from its
    kept weights: every number must equal what training that learning rate alone records epoch by epoch
    (respred: dropout, so the random stream must be untouched by the deferred measurement)."""
    from harness.telemetry import run_to_dict
    from harness.train import train

    base = dict(head=head, train=["scifact"], eval=["scifact"], data_dir=str(data_dir), epochs=3, patience=0, batch_size=32,
                probe_pairs=128, samples_per_epoch=2, **({"losses": losses} if losses else {}))
    grid = train(TrainConfig(**base, lr_grid=[3e-4, 3e-3]), progress=False).units["scifact"]
    alone = train(TrainConfig(**base, lr=grid.protocol["lr"], lr_grid=[]), progress=False).units["scifact"]

    def numbers(run):
        d = run_to_dict(run)
        for e in d["epochs"]:
            e.pop("seconds", None)
        return d["epochs"], d["selected"]

    assert numbers(grid) == numbers(alone)
    assert [t["lr"] for t in grid.protocol["trials"]] == [3e-4, 3e-3]
    assert all(len(t["dev_ndcg10"]) == 4 for t in grid.protocol["trials"])  # every trial's dev curve is kept


def test_generalizes_splits_queries_by_seen_documents_and_fails_a_memorising_head(data_dir):
    """SciFact: 196 test queries have a relevant document that was a training positive, 104 do not. A head that
    gains only on the former and loses on the latter fails; one that holds level on the latter passes."""
    from types import SimpleNamespace

    from harness.plugins.checks.generalizes import seen_split

    from harness import sources
    from harness.registry import get
    from harness.types import EpochRecord, TrainRun

    test, train = (sources.qrels("scifact", str(data_dir), s) for s in ("test", "train"))
    seen, unseen = seen_split(test, train)
    assert (len(seen), len(unseen)) == (196, 104)
    base = {q: 0.5 for q in test}
    check = get("checks", "generalizes").factory

    def verdict(unseen_delta):
        scores = {q: 0.5 + (0.2 if q in seen else unseen_delta) for q in test}
        rec = EpochRecord(epoch=3, ndcg10={"scifact": 0.6}, per_query_ndcg10={"scifact": scores})
        run = TrainRun(config={"eval": ["scifact"], "train": ["scifact"], "data_dir": str(data_dir)}, similarity="cos",
                       epochs=[rec], baseline_per_query_ndcg10={"scifact": base}, selected=3)
        return check.run(SimpleNamespace(run=run, name="x"), **check.defaults)

    memorising = verdict(-0.1)
    assert not memorising.passed and "unseen -0.1000 (n=104" in memorising.message
    assert verdict(0.0).passed and verdict(0.05).passed
