"""Gate suites: TOML files naming an encoder, datasets, candidates and the checks they must pass.

A suite is versioned (``version = 1``) and validated before anything trains: every error names the
file, the key and the valid choices. A minimal suite::

    version = 1
    name = "smoke"
    encoder = "minilm"
    datasets = ["scifact"]                  # evaluation datasets (split: eval_split)

    [train]                                 # training defaults for every candidate
    datasets = ["scifact"]
    epochs = 3
    max_pairs = 1024

    [checks.bounded_norms]                  # the checks every candidate runs, with thresholds
    max_norm_growth = 2.0
    [checks.finite]

    [[candidates]]
    name = "asym-dot"
    head = "asymmetric"
    losses = { infonce_dot = { weight = 1.0 } }
    expect_fail = ["bounded_norms"]         # strict: passing it fails the gate (XPASS)

A candidate may override thresholds (``[candidates.checks.<check>]``), training settings
(``[candidates.train]``), run only some checks (``checks_only = [...]``) and declare the checks it is
expected to fail (``expect_fail``, a list or a table ``check = "reason"``).
"""
from __future__ import annotations

import copy
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from harness.baselines import suite_root  # noqa: E402
from harness.components import ComponentError, check_components  # noqa: E402
from harness.config import ConfigError, TrainConfig  # noqa: E402
from harness.files import read_utf8  # noqa: E402
from harness.registry import components
from harness.suite_keys import CANDIDATE_KEYS, SUITE_KEYS, TRAIN_KEYS  # noqa: E402  (the vocabulary)
from harness.types import CheckTraits  # noqa: E402

SUPPORTED_VERSIONS = (1,)


class SuiteError(Exception):
    """A suite file is malformed; the message names the file, the key and the valid choices."""


def _choices(options) -> str:
    return ", ".join(sorted(options)) or "none"


def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=2, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


@dataclass
class CandidateSpec:
    name: str
    head: str
    losses: dict[str, dict]
    head_options: dict = field(default_factory=dict)
    description: str = ""
    pretrain: dict | None = None
    train: dict = field(default_factory=dict)
    checks: dict[str, dict] = field(default_factory=dict)  # check -> effective thresholds (suite + overrides)
    expect_fail: dict[str, str] = field(default_factory=dict)  # check -> reason
    nonstrict: set[str] = field(default_factory=set)  # expected failures caught on some seeds only (strict = false)


@dataclass
class Suite:
    path: Path
    version: int
    name: str
    encoder: str
    datasets: list[str]
    candidates: list[CandidateSpec]
    checks: dict[str, dict]  # check -> thresholds given in the suite (defaults not merged)
    description: str = ""
    eval_split: str = "test"
    requires_gpu: bool = False
    device: str | None = None
    seed: int = 0
    train: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)  # empty: [seed]
    baselines_dir: Path | None = None

    def candidate(self, name: str) -> CandidateSpec:
        for c in self.candidates:
            if c.name == name:
                return c
        names = [c.name for c in self.candidates]
        raise SuiteError(f"{self.path}: no candidate {name!r}.{_did_you_mean(name, names)} Candidates: {_choices(names)}")

    def train_config(self, candidate: CandidateSpec, seed: int | None = None, data_dir: str | None = None) -> dict:
        """The dict handed to ``harness.train.TrainConfig.from_dict`` for one candidate."""
        merged = {**self.train, **candidate.train}
        train_datasets = merged.pop("datasets", None) or list(self.datasets)
        config: dict[str, Any] = {
            "encoder": self.encoder,
            "head": candidate.head,
            "head_options": copy.deepcopy(candidate.head_options),
            "losses": copy.deepcopy(candidate.losses),
            "train": list(train_datasets),
            "eval": list(self.datasets),
            "eval_split": self.eval_split,
            "seed": self.seed,
        }
        if self.device:
            config["device"] = self.device
        config.update(merged)
        if candidate.pretrain is not None:
            config["pretrain"] = copy.deepcopy(candidate.pretrain)
        if seed is not None:
            config["seed"] = int(seed)
        if data_dir is not None:
            config["data_dir"] = str(data_dir)
        return config


# -- loading and validation ----------------------------------------------------------------------
class _Ctx:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str, choices=None) -> SuiteError:
        valid = f" Valid choices: {_choices(choices)}." if choices is not None else ""
        problem = problem if problem.endswith("?") else f"{problem.rstrip('.')}."  # "Did you mean 'x'?" ends a sentence
        return SuiteError(f"{self.path}: key {key!r}: {problem}{valid}")

    def expect(self, key: str, value: Any, types: type | tuple, what: str) -> Any:
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(key, f"expected {what}, got {value!r}")
        if not isinstance(value, types):
            raise self.fail(key, f"expected {what}, got {type(value).__name__} {value!r}")
        return value

    def unknown(self, where: str, table: dict, allowed: dict | set) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(f"{where}{key}", f"unknown key.{_did_you_mean(key, allowed)}", allowed)


def _names(value, ctx: _Ctx, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    ctx.expect(key, value, list, "a list of names")
    for i, v in enumerate(value):
        ctx.expect(f"{key}[{i}]", v, str, "a name (string)")
    if not value:
        raise ctx.fail(key, "must not be empty")
    return list(value)


def _registered(kind: str) -> dict:

    return components(kind)


def _check_thresholds(ctx: _Ctx, key: str, check: str, given: Any, checks: dict) -> dict:
    """Validate one ``[checks.<check>]`` table: known names, the default's type, finite numbers, sane ranges.

    Ranges: a check may declare ``ranges = {name: (low, high)}`` (inclusive; ``None`` = unbounded); the names
    below are known to the harness. Probabilities (``alpha``, ``power``) lie strictly between 0 and 1;
    fractions and agreement rates lie in [0, 1]; counts are integers >= 1, epochs and seeds integers >= 0."""
    import math

    open_unit = {"alpha", "power"}
    unit = {"min_agreement", "min_keep", "max_top10_overlap", "max_rel_drop", "ni_margin"}
    counts = {"permutations", "max_examples", "probe_rows", "probe_dim"}
    naturals = {"ref_epoch", "from_epoch", "seed"}
    ctx.expect(key, given, dict, f"a table of thresholds for check {check!r}")
    factory = checks[check].factory
    defaults = getattr(factory, "defaults", {}) or {}
    declared = getattr(factory, "ranges", {}) or {}
    for name, value in given.items():
        where = f"{key}.{name}"
        if name not in defaults:
            raise ctx.fail(where, f"check {check!r} has no threshold {name!r}.{_did_you_mean(name, defaults)}", defaults)
        default = defaults[name]
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            ctx.expect(where, value, (int, float), f"a number (default {default!r})")
            if isinstance(value, float) and not math.isfinite(value):
                raise ctx.fail(where, f"must be a finite number, got {value!r} (default {default!r})")
            if name in counts or name in naturals:
                if not isinstance(value, int):
                    raise ctx.fail(where, f"must be an integer, got {value!r} (default {default!r})")
                low = 1 if name in counts else 0
                if value < low:
                    raise ctx.fail(where, f"must be >= {low}, got {value!r} (default {default!r})")
            if name in open_unit and not 0 < value < 1:
                raise ctx.fail(where, f"is a probability and must lie strictly between 0 and 1, got {value!r} (default {default!r})")
            if name in unit and not 0 <= value <= 1:
                raise ctx.fail(where, f"is a fraction and must lie in [0, 1], got {value!r} (default {default!r})")
            if name in declared:
                low, high = declared[name]
                if (low is not None and value < low) or (high is not None and value > high):
                    raise ctx.fail(where, f"must lie in [{'-inf' if low is None else low}, {'inf' if high is None else high}], "
                                          f"got {value!r} (default {default!r})")
        elif default is not None and not isinstance(value, type(default)):
            raise ctx.fail(where, f"expected {type(default).__name__} like the default {default!r}, got {value!r}")
    return dict(given)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file. Raises ``SuiteError`` naming the file, the key and the choices."""
    path = Path(path)
    ctx = _Ctx(path)
    if path.is_dir():
        raise SuiteError(f"{path}: a folder, not a suite file; give a suites/*.toml file")
    if not path.is_file():
        raise SuiteError(f"{path}: suite file not found (suites live in suites/*.toml)")
    try:
        raw = tomllib.loads(read_utf8(path, SuiteError))
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML: {exc}") from exc
    ctx.unknown("", raw, SUITE_KEYS)
    if "version" not in raw:
        raise ctx.fail("version", "missing; add `version = 1` at the top", [str(v) for v in SUPPORTED_VERSIONS])
    version = raw["version"]
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise ctx.fail("version", f"unsupported suite version {version!r}", [str(v) for v in SUPPORTED_VERSIONS])
    for required in ("name", "encoder", "datasets", "candidates", "checks"):
        if required not in raw:
            raise ctx.fail(required, f"missing ({SUITE_KEYS[required]})")
    name = ctx.expect("name", raw["name"], str, "a string")
    if not name or any(c in name for c in "/\\ ") or name.strip(".") == "":
        raise ctx.fail("name", f"{name!r} must be non-empty, not only dots, without spaces or slashes (it names the report folder)")

    encoders = _registered("encoders")
    encoder = ctx.expect("encoder", raw["encoder"], str, "an encoder name")
    if encoder not in encoders and not Path(encoder).is_dir():
        raise ctx.fail("encoder", f"unknown encoder {encoder!r}.{_did_you_mean(encoder, encoders)}", encoders)
    datasets_known = _registered("datasets")
    datasets = _names(raw["datasets"], ctx, "datasets")
    for i, d in enumerate(datasets):
        if d not in datasets_known:
            raise ctx.fail(f"datasets[{i}]", f"unknown dataset {d!r}.{_did_you_mean(d, datasets_known)}", datasets_known)

    train = dict(ctx.expect("train", raw.get("train", {}), dict, "a table"))
    _validate_train(ctx, "train.", train, datasets_known)

    known_checks = _registered("checks")
    checks_raw = ctx.expect("checks", raw["checks"], dict, "a table of [checks.<name>] tables")
    if not checks_raw:
        raise ctx.fail("checks", "no checks listed; add at least one [checks.<name>] table", known_checks)
    checks: dict[str, dict] = {}
    for check, thresholds in checks_raw.items():
        if check not in known_checks:
            raise ctx.fail(f"checks.{check}", f"unknown check.{_did_you_mean(check, known_checks)}", known_checks)
        checks[check] = _check_thresholds(ctx, f"checks.{check}", check, thresholds, known_checks)

    heads = _registered("heads")
    losses = _registered("losses")
    cands_raw = ctx.expect("candidates", raw["candidates"], list, "an array of [[candidates]] tables")
    if not cands_raw:
        raise ctx.fail("candidates", "no candidates; add a [[candidates]] table")
    candidates: list[CandidateSpec] = []
    seen: set[str] = set()
    for i, c in enumerate(cands_raw):
        where = f"candidates[{i}]"
        ctx.expect(where, c, dict, "a table")
        ctx.unknown(f"{where}.", c, CANDIDATE_KEYS)
        for required in ("name", "head"):
            if required not in c:
                raise ctx.fail(f"{where}.{required}", f"missing ({CANDIDATE_KEYS[required]})")
        cname = ctx.expect(f"{where}.name", c["name"], str, "a string")
        if not cname or any(ch in cname for ch in "/\\ :[]") or cname.strip(".") == "":
            raise ctx.fail(f"{where}.name", f"{cname!r} must be non-empty, not only dots, without spaces, slashes, colons or brackets (it names a folder)")
        if cname in seen:
            raise ctx.fail(f"{where}.name", f"candidate name {cname!r} is used twice; names must be unique")
        seen.add(cname)
        where = f"candidates[{i}] ({cname})"
        head = ctx.expect(f"{where}.head", c["head"], str, "a head name")
        if head not in heads:
            raise ctx.fail(f"{where}.head", f"unknown head {head!r}.{_did_you_mean(head, heads)}", heads)
        head_options = dict(ctx.expect(f"{where}.head_options", c.get("head_options", {}), dict, "a table"))
        cand_losses: dict[str, dict] = {}
        for lname, lopts in ctx.expect(f"{where}.losses", c.get("losses", {}), dict, "a table of loss name -> options").items():
            if lname not in losses:
                raise ctx.fail(f"{where}.losses.{lname}", f"unknown loss.{_did_you_mean(lname, losses)}", losses)
            if isinstance(lopts, (int, float)) and not isinstance(lopts, bool):  # `infonce_cos = 0.5`: a weight, as --loss NAME:WEIGHT
                lopts = {"weight": lopts}
            lopts = dict(ctx.expect(f"{where}.losses.{lname}", lopts, dict, "a weight or a table like {weight = 1.0, temperature = 0.05}"))
            weight = lopts.setdefault("weight", 1.0)
            ctx.expect(f"{where}.losses.{lname}.weight", weight, (int, float), "a number")
            cand_losses[lname] = lopts
        pretrain = c.get("pretrain")
        if pretrain is not None:
            ctx.expect(f"{where}.pretrain", pretrain, dict, "a table")
        ctrain = dict(ctx.expect(f"{where}.train", c.get("train", {}), dict, "a table"))
        _validate_train(ctx, f"{where}.train.", ctrain, datasets_known)

        selected = list(checks)
        if "checks_only" in c:
            selected = _names(c["checks_only"], ctx, f"{where}.checks_only")
            for j, s in enumerate(selected):
                if s not in checks:
                    raise ctx.fail(f"{where}.checks_only[{j}]", f"check {s!r} is not among the suite's [checks]", checks)
        overrides = ctx.expect(f"{where}.checks", c.get("checks", {}), dict, "a table of [candidates.checks.<name>] tables")
        effective: dict[str, dict] = {}
        for check in selected:
            effective[check] = dict(checks[check])
        for check, thresholds in overrides.items():
            if check not in selected:
                raise ctx.fail(f"{where}.checks.{check}", f"check {check!r} is not run for this candidate", selected)
            effective[check].update(_check_thresholds(ctx, f"{where}.checks.{check}", check, thresholds, known_checks))

        xf = c.get("expect_fail", [])
        if isinstance(xf, list):
            xf = {k: "" for k in _names(xf, ctx, f"{where}.expect_fail")} if xf else {}
        ctx.expect(f"{where}.expect_fail", xf, dict, "a list of check names or a table check = \"reason\"")
        nonstrict: set[str] = set()
        for check, reason in list(xf.items()):
            if check not in effective:
                raise ctx.fail(f"{where}.expect_fail", f"{check!r} is not a check run for this candidate", effective)
            if isinstance(reason, dict):  # { reason = "...", strict = false }: caught on some seeds, not all
                ctx.unknown(f"{where}.expect_fail.{check}.", reason, {"reason": "why", "strict": "false: caught on some seeds"})
                strict = ctx.expect(f"{where}.expect_fail.{check}.strict", reason.get("strict", True), bool, "true or false")
                if not strict:
                    if CheckTraits.of(known_checks[check].factory).seeds == "pooled":
                        raise ctx.fail(f"{where}.expect_fail.{check}.strict",
                                       f"check {check!r} is judged once, on the seeds pooled, so it cannot be caught on "
                                       f"some seeds only; declare it strict (a string reason) or not at all")
                    nonstrict.add(check)
                reason = reason.get("reason", "")
                xf[check] = reason
            ctx.expect(f"{where}.expect_fail.{check}", reason, str, "a reason (string) or { reason = \"...\", strict = false }")
        _validate_components(ctx, where, head, head_options, {**((pretrain or {}).get("losses") or {}), **cand_losses})
        _validate_config(ctx, where, {**train, **ctrain}, ctrain, raw, datasets, head, head_options, cand_losses, pretrain)
        candidates.append(
            CandidateSpec(
                name=cname, head=head, losses=cand_losses, head_options=head_options,
                description=ctx.expect(f"{where}.description", c.get("description", ""), str, "a string"),
                pretrain=copy.deepcopy(pretrain), train=ctrain, checks=effective, expect_fail=dict(xf),
                nonstrict=nonstrict,
            )
        )

    eval_split = ctx.expect("eval_split", raw.get("eval_split", "test"), str, "a split name")
    requires_gpu = ctx.expect("requires_gpu", raw.get("requires_gpu", False), bool, "true or false")
    device = raw.get("device")
    if device is not None:
        ctx.expect("device", device, str, "a torch device string")
    seed = ctx.expect("seed", raw.get("seed", 0), int, "an integer")
    if seed < 0:
        raise ctx.fail("seed", f"must be an integer >= 0, got {seed}")
    seeds = raw.get("seeds", [seed])
    ctx.expect("seeds", seeds, list, "a list of integer seeds, e.g. [0, 1, 2]")
    for i, v in enumerate(seeds):
        ctx.expect(f"seeds[{i}]", v, int, "an integer >= 0")
        if v < 0:
            raise ctx.fail(f"seeds[{i}]", f"must be >= 0, got {v}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ctx.fail("seeds", "must be a non-empty list of distinct seeds")
    bdir = ctx.expect("baselines_dir", raw["baselines_dir"], str, "a folder path") if "baselines_dir" in raw else None
    return Suite(
        path=path, version=version, name=name, encoder=encoder, datasets=datasets, candidates=candidates,
        checks=checks, description=ctx.expect("description", raw.get("description", ""), str, "a string"),
        eval_split=eval_split, requires_gpu=requires_gpu, device=device, seed=seeds[0], train=train, seeds=list(seeds),
        baselines_dir=suite_root(path, bdir),
    )


def _validate_components(ctx: _Ctx, where: str, head: str, head_options: dict, losses: dict) -> None:
    """Check the head's options against what it takes, and build each loss once, so a wrong option fails
    here, not mid-run. The head itself is built at its real width when training starts (``harness validate``
    builds it there too, from the encoder's dimension)."""

    try:
        check_components(head, head_options, {})
    except ComponentError as exc:
        raise ctx.fail(f"{where}.head_options", str(exc)) from None
    for name, spec in losses.items():
        try:
            check_components(head, head_options, {name: spec})
        except ComponentError as exc:
            raise ctx.fail(f"{where}.losses.{name}", str(exc)) from None


def _validate_config(ctx: _Ctx, where: str, merged: dict, own: dict, raw: dict, datasets: list[str], head: str,
                     head_options: dict, losses: dict, pretrain: dict | None) -> None:
    """The candidate's whole training configuration, validated once by ``TrainConfig`` (the trainer's own
    vocabulary); an error names the table the bad key came from."""

    config = {k: v for k, v in merged.items() if k != "datasets"}
    config.update(encoder=raw.get("encoder", "minilm"), head=head, head_options=head_options, losses=losses,
                  train=list(merged.get("datasets") or datasets), eval=list(datasets),
                  eval_split=raw.get("eval_split", "test") if isinstance(raw.get("eval_split", "test"), str) else "test")
    if "seed" in raw and isinstance(raw["seed"], int) and "seed" not in merged:
        config["seed"] = raw["seed"]
    if pretrain is not None:
        config["pretrain"] = pretrain
    try:
        TrainConfig.from_dict(config)
    except ConfigError as exc:
        table = f"{where}.train." if exc.key in own else "train."
        key = exc.key if exc.key in TRAIN_KEYS or exc.key in own else exc.key
        if exc.key in ("pretrain",):
            table, key = f"{where}.", "pretrain"
        elif exc.key == "eval":
            table, key = "", "datasets"
        raise ctx.fail(f"{table}{key}", str(exc).removeprefix("training config: ")) from None


def _validate_train(ctx: _Ctx, where: str, table: dict, datasets_known: dict) -> None:
    ctx.unknown(where, table, TRAIN_KEYS)
    if "datasets" in table:
        table["datasets"] = _names(table["datasets"], ctx, f"{where}datasets")
        for i, d in enumerate(table["datasets"]):
            if d not in datasets_known:
                raise ctx.fail(f"{where}datasets[{i}]", f"unknown dataset {d!r}", datasets_known)
    # values are validated by TrainConfig (``_validate_config``), once, in the trainer's own vocabulary


def discover(folder: str | Path = "suites") -> list[Path]:
    return sorted(Path(folder).glob("*.toml"))
