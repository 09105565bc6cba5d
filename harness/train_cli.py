"""``harness train``: train a head on cached frozen-encoder embeddings and print its per-epoch telemetry."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from harness import cli, hookimpl

if TYPE_CHECKING:
    from harness.types import TrainRun

console = Console() if sys.stdout.isatty() else Console(width=240)  # a wide table stays readable in logs
err = Console(stderr=True)

DESCRIPTION = """\
Train a head (a plugin) on top of a frozen encoder's cached embeddings, from the train qrels of BEIR
datasets, and record after every epoch: the loss components, query/document norms, positive and
negative similarity as the loss sees it, gradient norm, residual statistics, RankMe, alignment/
uniformity, and NDCG@10 on the evaluation datasets (epoch 0 = the untrained head).
"""

EPILOG = """\
examples:
  # seed 002: asymmetric projections, InfoNCE on raw dot products (and its cosine fix)
  harness train --head asymmetric --loss infonce_dot --epochs 3
  harness train --head asymmetric --head-option similarity=cos --loss infonce_cos --epochs 3
  # seed 004: residual predictor with isotropy 1.5, predictive 1.2, residual L2 0.01 (its defaults)
  harness train --head respred --loss isotropy:1.5,predictive:1.2,residual_l2:0.01 --out runs/respred
  harness train --head respred --head-option tanh=false --loss isotropy:1.5,predictive:1.2
  # seeds 000/001: Barlow Twins pretraining, then ranking
  harness train --head barlow --pretrain barlow --pretrain-epochs 3 --loss infonce_cos --epochs 3
losses are NAME[:WEIGHT] (weight 1 if left out), comma-separated or repeated; options go with
--loss-option NAME.KEY=VALUE (e.g. infonce_cos.temperature=0.05). `harness plugins` lists heads and losses.
"""


def parse_value(text: str):
    """``true``/``false``/``null``/numbers/JSON, else the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: list[str] | None, flag: str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def parse_losses(items: list[str] | None, options: list[str] | None, flag: str) -> dict:
    losses: dict[str, dict] = {}
    for item in items or []:
        for part in cli._csv(item):
            name, _, weight = part.partition(":")
            try:
                losses[name.strip()] = {"weight": float(weight) if weight else 1.0}
            except ValueError:
                raise ValueError(f"{flag} {part!r}: the weight after ':' must be a number") from None
    for key, value in parse_options(options, f"{flag}-option").items():
        name, dot, opt = key.partition(".")
        if not dot or not opt:
            raise ValueError(f"{flag}-option {key!r}: expected LOSS.KEY=VALUE, e.g. infonce_cos.temperature=0.05")
        if name not in losses:
            raise ValueError(f"{flag}-option {key!r}: loss {name!r} is not among {flag} ({', '.join(losses) or 'none'})")
        losses[name][opt] = value
    return losses


def load_config_file(path: str) -> dict:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read config {p}: {exc}") from exc
    if p.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        return tomllib.loads(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"config {p} is not valid JSON ({exc}); use .json or .toml") from exc


def config_from_args(args) -> dict:
    d = load_config_file(args.config) if args.config else {}
    simple = {
        "encoder": args.encoder, "head": args.head, "train": args.train, "eval": args.eval, "eval_split": args.eval_split,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "seed": args.seed, "device": args.device, "data_dir": args.data_dir, "mode": args.mode, "select": args.select,
        "patience": args.patience, "hard_negatives": args.hard_negatives, "dev_fraction": args.dev_fraction,
        "positives": args.positives, "lr_grid": args.lr_grid,
    }
    d.update({k: v for k, v in simple.items() if v is not None})
    if args.max_pairs is not None:
        d["max_pairs"] = None if args.max_pairs.lower() == "all" else _int(args.max_pairs, "--max-pairs")
    if args.head_option:
        d["head_options"] = {**d.get("head_options", {}), **parse_options(args.head_option, "--head-option")}
    if args.loss:
        d["losses"] = parse_losses(args.loss, args.loss_option, "--loss")
    elif args.loss_option:
        raise ValueError("--loss-option needs --loss naming the loss it configures")
    if args.pretrain:
        d["pretrain"] = {"losses": parse_losses(args.pretrain, args.pretrain_option, "--pretrain"), "epochs": args.pretrain_epochs or 1}
        if args.pretrain_lr is not None:
            d["pretrain"]["lr"] = args.pretrain_lr
    elif args.pretrain_epochs or args.pretrain_option:
        raise ValueError("--pretrain-epochs/--pretrain-option need --pretrain naming the pretraining losses")
    if "head" not in d:
        raise ValueError("no head given: pass --head (see `harness plugins --kind heads`) or a --config with 'head'")
    return d


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{flag} must be an integer or 'all', got {text!r}") from None


def _f(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 10 ** -digits):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def epoch_table(run: "TrainRun") -> Table:
    names = [k for k in run.epochs[-1].loss if k != "total"]
    datasets = list(run.baseline_ndcg10)
    residual = any(e.residual for e in run.epochs)
    cfg = run.config
    stage_of = {}
    pre = (cfg.get("pretrain") or {}).get("epochs", 0) if cfg.get("pretrain") else 0
    for e in run.epochs:
        stage_of[e.epoch] = "init" if e.epoch == 0 else ("pretrain" if e.epoch <= pre else "train")
    losses = ", ".join(f"{k}×{v['weight']:g}" for k, v in cfg["losses"].items()) or "none"
    if cfg.get("pretrain"):
        losses = ", ".join(f"{k}×{v['weight']:g}" for k, v in cfg["pretrain"]["losses"].items()) + f" ({pre} ep) then " + losses
    table = Table(title=f"{cfg['head']} on {cfg['encoder']} · {run.similarity} · {losses}")
    devs = list(run.epochs[0].dev_ndcg10)
    cols = ["ep", "loss"] + names + ["|q| mean", "|q| max", "|d| mean", "pos", "neg", "grad"]
    if residual:
        cols += ["α", "|αδ| max", "|αδ|/|q|"]
    cols += ["RankMe", "align", "unif"] + [f"{d} dev" for d in devs] + [f"{d} NDCG@10" for d in datasets] + ["top10 ∩"]
    for c in cols:
        table.add_column(c, justify="right")
    base = ["frozen", "-"] + ["-"] * len(names) + ["-"] * 6 + (["-"] * 3 if residual else [])
    base += [_f(run.baseline_rankme, 1), "-", "-"] + ["-"] * len(devs) + [_f(run.baseline_ndcg10[d], 4) for d in datasets] + ["1.000"]
    table.add_row(*base, style="dim")
    best = run.selected_epoch.epoch
    for e in run.epochs:
        label = f"{e.epoch}" + (" p" if stage_of[e.epoch] == "pretrain" else "") + (" *" if e.epoch == best else "")
        row = [label, _f(e.loss.get("total"), 4)] + [_f(e.loss.get(n), 4) for n in names]
        row += [_f(e.q_norm.get("mean")), _f(e.q_norm.get("max")), _f(e.d_norm.get("mean")), _f(e.pos_sim), _f(e.neg_sim), _f(e.grad_norm)]
        if residual:
            r = e.residual or {}
            row += [_f(r.get("alpha"), 4), _f(r.get("correction_max"), 4), _f(r.get("correction_rel"), 4)]
        overlap = list(e.top10_overlap.values())
        row += [_f(e.rankme, 1), _f(e.alignment), _f(e.uniformity)] + [_f(e.dev_ndcg10.get(d), 4) for d in devs]
        row += [_f(e.ndcg10.get(d), 4) for d in datasets]
        row += [_f(sum(overlap) / len(overlap)) if overlap else "-"]
        table.add_row(*row)
    table.caption = "ep: epoch (p = pretraining, * = selected: best dev NDCG@10, or the last); loss on a fixed probe of training pairs; " \
                    "pos/neg: mean positive/negative similarity as the loss uses it; top10 ∩: overlap with the frozen top 10"
    return table


def cmd_train(args) -> int:
    from harness.registry import PluginError
    from harness.telemetry import run_to_dict
    from harness.train import TrainConfig, train

    try:
        config = TrainConfig.from_dict(config_from_args(args))

        def on_epoch(unit, e):
            nd = " ".join(f"{k}={v:.4f}" for k, v in e.ndcg10.items())
            dev = " ".join(f"{k}={v:.4f}" for k, v in e.dev_ndcg10.items())
            err.print(f"{unit} epoch {e.epoch}: loss {_f(e.loss.get('total'), 4)} |q| {_f(e.q_norm.get('mean'))} "
                      f"dev NDCG@10 {dev or '-'} test NDCG@10 {nd}", highlight=False, markup=False, soft_wrap=True)

        result = train(config, Path(args.out) if args.out else None, progress=not args.json, on_epoch=None if args.json else on_epoch)
    except (ValueError, PluginError) as exc:
        cli.error(exc)
        return cli.EXIT_ERROR
    if args.json:
        out: dict[str, Any] = {"mode": result.mode, "units": {}}
        for name, run in result.units.items():
            d = run_to_dict(run)
            for e in d["epochs"]:
                e.pop("per_query_ndcg10", None)
            d.pop("baseline_per_query_ndcg10", None)
            out["units"][name] = d
        print(json.dumps(out, indent=1))
        return 0
    for name, run in result.units.items():
        console.print(epoch_table(run))
        sel = run.selected_epoch
        proto = run.protocol
        console.print(f"{name}: selected epoch {sel.epoch} (select={proto.get('select')}, lr {proto.get('lr'):g}"
                      f"{', of ' + ', '.join(f'{x:g}' for x in proto.get('lr_grid', [])) if len(proto.get('lr_grid', [])) > 1 else ''}): "
                      f"{', '.join(f'{k} {v:.4f} vs frozen {run.baseline_ndcg10[k]:.4f}' for k, v in sel.ndcg10.items()) or 'no eval dataset'}",
                      markup=False, highlight=False)
        if run.stopped:
            console.print(f"{name}: training stopped: {run.stopped['reason']}", markup=False)
        if run.telemetry_path:
            console.print(f"telemetry: {run.telemetry_path}\ncheckpoint: {run.checkpoint}", markup=False)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a head on cached embeddings and record per-epoch telemetry",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON or TOML file with TrainConfig keys; flags override it")
    p.add_argument("--encoder", help="frozen encoder (default: minilm)")
    p.add_argument("--head", help="registered head: identity, asymmetric, respred, isopred, barlow, ...")
    p.add_argument("--head-option", action="append", metavar="KEY=VALUE", help="head option, repeatable (e.g. tanh=false)")
    p.add_argument("--loss", action="append", metavar="NAME[:WEIGHT],...", help="losses with weights (default: the head's default_losses)")
    p.add_argument("--loss-option", action="append", metavar="LOSS.KEY=VALUE", help="loss option, repeatable (e.g. barlow.lambd=0.005)")
    p.add_argument("--pretrain", action="append", metavar="NAME[:WEIGHT],...", help="losses of a pretraining stage run first (e.g. barlow)")
    p.add_argument("--pretrain-epochs", type=int, help="epochs of the pretraining stage (default 1)")
    p.add_argument("--pretrain-option", action="append", metavar="LOSS.KEY=VALUE", help="pretraining loss option, repeatable")
    p.add_argument("--pretrain-lr", type=float, help="learning rate of the pretraining stage (default: --lr)")
    p.add_argument("--train", type=cli._csv, help="comma-separated training datasets (train split; default scifact,nfcorpus)")
    p.add_argument("--eval", type=cli._csv, help="comma-separated evaluation datasets (default scifact,nfcorpus)")
    p.add_argument("--eval-split", help="qrels split to evaluate on (default: test)")
    p.add_argument("--epochs", type=int, help="at most this many training epochs (default 20; early stopping ends sooner)")
    p.add_argument("--batch-size", type=int, help="batch size, also the in-batch negatives (default 64)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--lr-grid", type=lambda v: [float(x) for x in cli._csv(v)], metavar="LR,LR,...",
                   help="learning rates to try, the best on the dev split kept (default: only --lr)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    p.add_argument("--mode", choices=("per_dataset", "pooled"), help="a head per training dataset (default) or one pooled head")
    p.add_argument("--select", choices=("dev", "last"), help="keep the epoch with the best dev NDCG@10 (default) or the last")
    p.add_argument("--patience", type=int, help="stop after this many epochs without a better dev NDCG@10 (0: never; default 8)")
    p.add_argument("--hard-negatives", type=int, help="mined negatives per query per step from the frozen top 50 (default 1; 0: in-batch only)")
    p.add_argument("--dev-fraction", type=float, help="share of train queries held out to select on (default 0.2)")
    p.add_argument("--positives", choices=("one_per_query", "all"), help="one judged document per query per epoch (default) or every pair")
    p.add_argument("--max-pairs", help="cap on training pairs per dataset, sampled with the seed, or 'all' (default 10000)")
    p.add_argument("--seed", type=int, help="seed of the head's init, sampling and shuffling (default 0)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--data-dir", help="folder holding BEIR datasets (default: $HARNESS_DATA_DIR)")
    p.add_argument("--out", help="folder for telemetry.json and head.safetensors")
    p.add_argument("--json", action="store_true", help="print the telemetry as JSON (without per-query scores) instead of a table")
    p.set_defaults(func=cmd_train)


@hookimpl
def register_commands(subparsers):
    add_parser(subparsers)
