"""The suite format's vocabulary: every key a suite file may hold, with the one-line help its errors quote."""

SUITE_KEYS = {
    "version": "the suite format version (1)",
    "name": "a short name (reports are written under reports/<name>/)",
    "description": "one line on what the suite gates",
    "encoder": "the frozen encoder every candidate sits on (a registered encoder)",
    "datasets": "evaluation datasets (registered names)",
    "eval_split": "qrels split the candidates are scored on (default test)",
    "requires_gpu": "true if the suite needs CUDA (pytest marks its items `gpu`)",
    "device": "torch device for training (default: cuda if available, else cpu)",
    "seed": "training seed when `seeds` is not given (harness run --seed overrides it)",
    "seeds": "training seeds: every candidate is trained and judged on each (harness run --seeds overrides them)",
    "baselines_dir": "folder of stored baselines, relative to the suite file (default: $HARNESS_BASELINES_DIR, else "
                     "../baselines if it exists, else ./baselines or the harness's own)",
    "train": "table of training defaults for every candidate",
    "checks": "table of checks to run, each a table of thresholds",
    "candidates": "array of candidate tables ([[candidates]])",
}
CANDIDATE_KEYS = {
    "name": "unique candidate name",
    "description": "what the candidate is (and which seed it reproduces)",
    "head": "a registered head",
    "head_options": "options passed to the head",
    "losses": "table of loss name -> {weight = ..., options}",
    "pretrain": "optional pretraining stage (a table passed to the trainer)",
    "train": "training overrides for this candidate",
    "checks": "per-check threshold overrides for this candidate",
    "checks_only": "run only these of the suite's checks for this candidate",
    "expect_fail": "checks this candidate is expected to fail (strict: a pass on any seed turns the gate red; "
                   "{ reason = \"...\", strict = false }: caught on at least one seed)",
}
# Keys of [train] that the trainer understands; the rest of TrainConfig is filled in by the suite.
TRAIN_KEYS = {
    "datasets": "training datasets (their train split)",
    "epochs": "epochs (>= 1)",
    "batch_size": "batch size",
    "lr": "learning rate",
    "max_pairs": "cap on training pairs",
    "seed": "training seed",
    "device": "torch device",
    "weight_decay": "AdamW weight decay",
    "max_grad_norm": "clip the gradient norm to this (default: no clipping)",
    "train_split": "qrels split the training pairs come from (default train)",
    "probe_pairs": "training pairs telemetry is measured on",
    "samples_per_epoch": "training steps sampled into telemetry",
    "eval_doc_sample": "documents per eval dataset for RankMe and uniformity",
    "mode": "\"per_dataset\" (a head per training dataset, scored on it; default) or \"pooled\"",
    "hard_negatives": "mined negatives per query per step (0: in-batch negatives only; default 1)",
    "negative_depth": "hard negatives come from the frozen encoder's top this many (default 50)",
    "dev_fraction": "share of train queries held out as the dev split (default 0.2)",
    "select": "\"dev\" (epoch and lr with the best dev NDCG@10; default) or \"last\"",
    "patience": "early stopping: epochs without a better dev NDCG@10 (0: never; default 8)",
    "lr_grid": "learning rates to try, chosen on dev (default: only lr)",
    "positives": "\"one_per_query\" (default) or \"all\" (every judged pair, capped by max_pairs)",
}
