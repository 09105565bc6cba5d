#!/usr/bin/env bash
# Build .gpu/ (git-ignored): what a lent GPU machine without registry access or model weights needs to run a suite:
# the encoder's embedding-cache entries (and the mined hard negatives; no weights), its manifest, the BEIR folders
# (tar.gz), a beir wheel, and a CPU run's report.json to compare with.
#   bash benchmarks/gpu_carry.sh [REPORT] [ENCODER]   (defaults: reports/smoke minilm; ~29 MB)
#   bash benchmarks/gpu_carry.sh reports/gpu_cpu mpnet  (the GPU suite: ~45 MB; the device takes 64 MiB per call)
# Then, on the device (carry .gpu): `bash benchmarks/gpu_smoke.sh` or `bash benchmarks/gpu_suite.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
report="${1:-reports/smoke}"
encoder="${2:-minilm}"
cache="${HARNESS_CACHE_DIR:-.cache}"
data="${HARNESS_DATA_DIR:-../shared/data/beir}"
[ -f "$report/report.json" ] || { echo "gpu_carry: $report/report.json not found: run the suite on CPU first (harness run ... --out $report)" >&2; exit 2; }
[ -f "$cache/encoders/$encoder.json" ] || { echo "gpu_carry: $cache/encoders/$encoder.json not found: encode with $encoder here first" >&2; exit 2; }
rm -rf .gpu && mkdir -p .gpu/cache/embeddings .gpu/cache/encoders .gpu/wheels
# Each entry names its encoder in its safetensors metadata; hard negatives name none (their key holds it): take all.
python3 - "$cache/embeddings" .gpu/cache/embeddings "$encoder" <<'PY'
import json, shutil, struct, sys
from pathlib import Path
src, dst, encoder = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
taken = 0
for path in sorted(src.glob("*/*.safetensors")):
    with open(path, "rb") as fh:
        meta = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0])).get("__metadata__", {})
    if meta.get("encoder") == encoder or meta.get("kind") == "hard_negatives":
        (dst / path.parent.name).mkdir(exist_ok=True)
        shutil.copy2(path, dst / path.parent.name / path.name)
        taken += 1
print(f"{taken} cache entries")
PY
cp "$cache/encoders/$encoder.json" .gpu/cache/encoders/
tar czf .gpu/beir-data.tgz -C "$(dirname "$data")" "$(basename "$data")/scifact" "$(basename "$data")/nfcorpus"
python3 -m pip download --quiet --no-deps -d .gpu/wheels beir
cp "$report/report.json" .gpu/cpu-report.json
du -sh .gpu
