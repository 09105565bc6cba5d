#!/usr/bin/env bash
# Build .gpu/ (git-ignored, ~28 MB): what a lent GPU machine without registry access or model weights needs to run
# the smoke suite: the embedding cache (MiniLM entries and mined hard negatives, no weights), the encoder manifest,
# the BEIR folders (tar.gz), a beir wheel, and a CPU run's report.json to compare with (first argument, default
# reports/smoke). Then, on the device: `bash benchmarks/gpu_smoke.sh` (carry .gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${HARNESS_CACHE_DIR:-.cache}"
data="${HARNESS_DATA_DIR:-../shared/data/beir}"
rm -rf .gpu && mkdir -p .gpu/cache/encoders .gpu/wheels
cp -r "$cache/embeddings" .gpu/cache/ && cp "$cache/encoders/minilm.json" .gpu/cache/encoders/
find .gpu/cache -name "*.lock" -delete
tar czf .gpu/beir-data.tgz -C "$(dirname "$data")" "$(basename "$data")/scifact" "$(basename "$data")/nfcorpus"
python3 -m pip download --quiet --no-deps -d .gpu/wheels beir
cp "${1:-reports/smoke}/report.json" .gpu/cpu-report.json
du -sh .gpu
