"""Fuzzing (docs/reliability.md, case 10): hypothesis feeds random and mutated suite files and BEIR files to the
loaders for a few seconds each; nothing but the harness's own error types may escape, and what loads is sound."""
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import harness_errors

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)

SUITE = """\
version = 1
name = "fuzz"
encoder = "minilm"
datasets = ["scifact"]
seed = 3
[train]
epochs = 1
max_pairs = 64
lr = 0.001
[checks.finite]
[checks.bounded_norms]
max_norm_growth = 3.0
[checks.beats_baseline]
alpha = 0.05
permutations = 100
[[candidates]]
name = "identity"
head = "identity"
expect_fail = ["bounded_norms"]
[[candidates]]
name = "asym"
head = "asymmetric"
losses = { infonce_dot = { weight = 1.0 } }
checks_only = ["finite", "bounded_norms"]
expect_fail = { bounded_norms = "raw dot grows norms" }
[candidates.checks.bounded_norms]
max_norm = 5.0
"""

TOML_ATOMS = ["1", "0", "-1", "2.5", "nan", "inf", "-inf", "true", "false", '""', '"x"', '"scifact"', '"minilm"', "[]",
              '["finite"]', "{}", "{ weight = 1.0 }", '{ infonce_dot = { weight = "a" } }', "[1, 2]", '[[1], ["a"]]',
              '"bounded_norms"', "1e400", "9223372036854775807", '"a[/x]"', "{ nope = 1 }"]
TOML_CHARS = st.sampled_from(list('[]{}=",.\n#\t abcxyz019_-\'\\') + ["\u00e9", "\x00", "\ufffd"])


@st.composite
def mutated(draw, base: str, atoms: list[str], chars) -> str:
    text = base
    for _ in range(draw(st.integers(1, 4))):
        n = len(text)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 40)))
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "value", "line"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(st.text(chars, max_size=12)) + text[i:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "value":  # replace the value of a random `key = value` line
            lines = text.split("\n")
            k = draw(st.integers(0, max(0, len(lines) - 1)))
            if "=" in lines[k]:
                lines[k] = lines[k].split("=", 1)[0] + "= " + draw(st.sampled_from(atoms))
            text = "\n".join(lines)
        else:  # swap two lines
            lines = text.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return text


def _write(text: str | bytes, name: str = "suite.toml") -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-suite-"))
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return path


def _load_suite_or_harness_error(path: Path, loader):
    try:
        return loader(path)
    except harness_errors() as exc:
        message = str(exc)
        assert message and "\n" not in message.strip(), message
        assert str(path) in message, message  # names the file
        return None


def test_the_seed_suite_is_valid():
    from harness.suite import load_suite

    suite = load_suite(_write(SUITE))
    assert [c.name for c in suite.candidates] == ["identity", "asym"]


@FUZZ
@given(mutated(SUITE, TOML_ATOMS, TOML_CHARS))
def test_load_suite_on_mutated_suites(text):
    from harness.suite import load_suite

    suite = _load_suite_or_harness_error(_write(text), load_suite)
    if suite is not None:
        for c in suite.candidates:
            for check, thresholds in c.checks.items():
                for v in thresholds.values():
                    assert not (isinstance(v, float) and not math.isfinite(v)), (check, thresholds)


@FUZZ
@given(st.text(TOML_CHARS, max_size=300))
def test_load_suite_on_random_text(text):
    from harness.suite import load_suite

    _load_suite_or_harness_error(_write(text), load_suite)


@FUZZ
@given(mutated(SUITE, TOML_ATOMS, TOML_CHARS), st.binary(max_size=4), st.integers(0, 2000))
def test_cli_suite_loader_on_mutated_bytes(text, junk, at):
    """Bytes that are not UTF-8 included: the CLI's loader (harness.gate_cli.load_suite_file) reports them too."""
    from harness.gate_cli import load_suite_file

    data = text.encode("utf-8", "surrogatepass")
    at = min(at, len(data))
    _load_suite_or_harness_error(_write(data[:at] + junk + data[at:]), load_suite_file)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"


def mostly(valid, other, one_in: int = 5):
    """``valid``, but ``other`` once in ``one_in`` draws: deep enough to reach every check, odd enough to break them."""
    return st.integers(1, one_in).flatmap(lambda i: other if i == one_in else valid)  # hypothesis favours small i


def _structured():
    from harness.registry import components
    from harness.suite import CANDIDATE_KEYS, SUITE_KEYS, TRAIN_KEYS

    checks = components("checks")
    odd = (st.booleans() | st.integers(-3, 10**4) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
           | st.lists(st.integers(0, 3) | st.text(max_size=3), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    number = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-3, 10**4)
    names = lambda kind: st.sampled_from(sorted(components(kind)) + ["nope"])  # noqa: E731
    def check_entry(name):
        own = sorted(getattr(checks[name].factory, "defaults", {}) or {}) if name in checks else []
        keys = mostly(st.sampled_from(own), st.just("nope"), 10) if own else st.just("nope")
        return st.tuples(st.just(name), st.dictionaries(keys, mostly(number, odd), max_size=2))

    entry = mostly(st.sampled_from(sorted(checks)), st.just("nope"), 20).flatmap(check_entry)
    check_tables = mostly(st.lists(entry, min_size=1, max_size=3).map(dict), odd, 10)
    train = mostly(st.dictionaries(st.sampled_from(sorted(TRAIN_KEYS) + ["nope"]), mostly(st.integers(1, 3), odd), max_size=3), odd)
    candidate_optional = {
        "losses": mostly(st.dictionaries(names("losses"), mostly(st.fixed_dictionaries({}, optional={"weight": mostly(number, odd)}),
                                                                 odd), max_size=2), odd),
        "head_options": mostly(st.dictionaries(st.sampled_from(["hidden", "alpha_init", "depth", "nope"]),
                                               mostly(st.integers(-2, 64), odd), max_size=2), odd),
        "train": train, "checks": check_tables,
        "checks_only": mostly(st.lists(names("checks"), max_size=3), odd),
        "expect_fail": mostly(st.lists(names("checks"), max_size=2) | st.dictionaries(names("checks"), mostly(st.text(max_size=5), odd),
                                                                                      max_size=2), odd),
        "pretrain": mostly(st.fixed_dictionaries({}, optional={"losses": mostly(st.dictionaries(names("losses"), odd, max_size=2), odd),
                                                               "epochs": odd}), odd),
    }
    for key in CANDIDATE_KEYS:  # every key the loader knows is fuzzed, new ones with arbitrary values
        if key not in ("name", "head"):
            candidate_optional.setdefault(key, odd)
    candidate = st.fixed_dictionaries(
        {"name": mostly(st.sampled_from(["a", "b", "c"]), st.sampled_from(["a b", "c[/x]", ""]) | odd),
         "head": mostly(names("heads"), odd)},
        optional=candidate_optional)
    suite = st.fixed_dictionaries(
        {"version": mostly(st.just(1), odd, 20), "name": mostly(st.just("fuzz"), odd, 20),
         "encoder": mostly(st.sampled_from(["minilm", "mpnet"]), st.just("nope") | odd, 20),
         "datasets": mostly(st.sampled_from([["scifact"], ["scifact", "nfcorpus"]]), st.sampled_from([[], ["nope"]]) | odd, 20),
         "checks": check_tables, "candidates": mostly(st.lists(candidate, min_size=1, max_size=3), odd, 20)},
        optional={"train": train, **{k: mostly(st.nothing(), odd, 1) for k in SUITE_KEYS
                                     if k not in ("version", "name", "encoder", "datasets", "checks", "candidates", "train")}},
    )
    return suite


@settings(FUZZ, max_examples=80)
@given(st.data())
def test_load_suite_on_generated_suites(data):
    """Whole suites built from the known keys with random values: reaches every validation path."""
    from harness.suite import load_suite

    doc = data.draw(_structured())
    text = "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in doc.items())
    suite = _load_suite_or_harness_error(_write(text), load_suite)
    if suite is not None:
        for c in suite.candidates:
            for thresholds in c.checks.values():
                assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in thresholds.values())


# -- BEIR loaders --------------------------------------------------------------------------------------------------
CORPUS = "".join(json.dumps(d) + "\n" for d in [
    {"_id": "d1", "title": "Alpha", "text": "first document", "metadata": {}},
    {"_id": "d2", "title": "Beta", "text": "second document"},
    {"_id": "d3", "text": "third, no title"},
])
QUERIES = "".join(json.dumps(q) + "\n" for q in [{"_id": "q1", "text": "first?", "metadata": {"x": 1}}, {"_id": "q2", "text": "second?"}])
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n"
JSON_ATOMS = ['"d1"', '"q1"', "null", "1", "[]", "{}", '"x"', "true", '{"_id": "d1"}', '"\\ud800"', "1e999", "-0"]
BYTE_CHARS = st.sampled_from(list('{}[]":,\n\t\r 0123abcdq_') + ["\\", "\u00e9", "\x00"])


@st.composite
def mutated_bytes(draw, base: str) -> bytes:
    text = draw(mutated(base, JSON_ATOMS, BYTE_CHARS))
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=3)) + data[at:]
    return data


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=6)
def records(pool: list[str]):
    return st.fixed_dictionaries(
        {"_id": mostly(st.sampled_from(pool), json_values | st.sampled_from(["", " d1"]), 10),
         "text": mostly(st.text(max_size=8), json_values, 10)},
        optional={"title": mostly(st.text(max_size=5), json_values), "metadata": json_values},
    )


@st.composite
def generated_jsonl(draw, pool: list[str]) -> bytes:
    row = mostly(records(pool), json_values, 10)
    unique = st.lists(row, max_size=6, unique_by=lambda r: json.dumps(r.get("_id")) if isinstance(r, dict) else json.dumps(r))
    rows = draw(mostly(unique, st.lists(row, max_size=6)))
    sep = draw(mostly(st.just("\n"), st.sampled_from(["\r\n", "\n\n"]), 10))
    return sep.join(json.dumps(r) for r in rows).encode() + draw(st.sampled_from([b"", b"\n", b"\n\n"]))


@st.composite
def generated_qrels(draw) -> bytes:
    cell = st.sampled_from(["q9", "d9", "1", "0", "-1", "2.5", "", "score", "query-id", " q1 "])
    good = st.tuples(st.sampled_from(["q1", "q2"]), st.sampled_from(["d1", "d2", "d3"]), st.sampled_from(["0", "1", "2"])).map(list)
    rows = draw(st.lists(mostly(good, st.lists(cell, max_size=5), 6), max_size=6))
    header = draw(st.sampled_from([[], [["query-id", "corpus-id", "score"]]]))
    return "\n".join("\t".join(r) for r in header + rows).encode() + draw(st.sampled_from([b"", b"\n"]))


def _load_folder_or_data_error(corpus: bytes, queries: bytes, qrels: bytes):
    import harness.data as hd

    root = Path(tempfile.mkdtemp(prefix="fuzz-beir-"))
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_bytes(corpus)
    (root / "queries.jsonl").write_bytes(queries)
    (root / "qrels" / "test.tsv").write_bytes(qrels)
    try:
        split = hd.BeirDataset("fuzz", root).load("test")
    except hd.DatasetError as exc:
        message = str(exc)
        assert "\n" not in message and str(root) in message, message
        return None
    # what loads is sound: every judgement names a known query and document, texts are strings
    assert split.qrels and all(isinstance(s, int) for j in split.qrels.values() for s in j.values())
    assert set(split.queries) == set(split.qrels)
    assert all(d in split.corpus for j in split.qrels.values() for d in j)
    assert all(isinstance(t, str) for t in split.queries.values())
    assert all(isinstance(d["text"], str) and isinstance(d["title"], str) for d in split.corpus.values())
    return split


def test_the_seed_folder_is_valid():
    split = _load_folder_or_data_error(CORPUS.encode(), QUERIES.encode(), QRELS.encode())
    assert split.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}


@FUZZ
@given(mutated_bytes(CORPUS))
def test_corpus_loader_on_mutated_files(corpus):
    _load_folder_or_data_error(corpus, QUERIES.encode(), QRELS.encode())


@FUZZ
@given(mutated_bytes(QUERIES))
def test_queries_loader_on_mutated_files(queries):
    _load_folder_or_data_error(CORPUS.encode(), queries, QRELS.encode())


@FUZZ
@given(mutated_bytes(QRELS))
def test_qrels_loader_on_mutated_files(qrels):
    _load_folder_or_data_error(CORPUS.encode(), QUERIES.encode(), qrels)


@settings(FUZZ, max_examples=150)
@given(generated_jsonl(["d1", "d2", "d3"]), generated_jsonl(["q1", "q2"]), generated_qrels())
def test_loaders_on_generated_files(corpus, queries, qrels):
    _load_folder_or_data_error(corpus, queries, qrels)


@pytest.fixture(autouse=True)
def _clean_tmp(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # every example's files under this test's tmp_path
