#!/usr/bin/env bash
# On the device (carry .gpu, built by benchmarks/gpu_carry.sh): the smoke suite on CUDA, then the adapter on that machine's CPU,
# and the wall time per phase of each (benchmarks/phase_times.py).
set -u
python3 -V; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
pip install --quiet --no-deps --no-index --target /tmp/pylib .gpu/wheels/beir-*.whl 2>&1 | tail -1
mkdir -p /tmp/data && tar xzf .gpu/beir-data.tgz -C /tmp/data  # -> /tmp/data/beir/{scifact,nfcorpus}
export PYTHONPATH=$PWD:/tmp/pylib HARNESS_DATA_DIR=/tmp/data/beir HARNESS_CACHE_DIR=$PWD/.gpu/cache HARNESS_PROGRESS_INTERVAL=30
start=$(date +%s)
timeout 170 python3 -m harness.cli run suites/smoke.toml --seeds 0 --require-gpu --candidate adapter,asym-dot,respred-seed004 \
  --out $OUT/smoke-gpu --no-progress --no-github-summary > $OUT/gpu.log 2>&1; echo "gpu rc=$? wall=$(( $(date +%s) - start ))s"
tail -25 $OUT/gpu.log
python3 benchmarks/phase_times.py $OUT/smoke-gpu
start=$(date +%s)
timeout 75 python3 -m harness.cli run suites/smoke.toml --seeds 0 --device cpu --candidate adapter \
  --out $OUT/smoke-cpu --no-progress --no-github-summary > $OUT/cpu.log 2>&1; echo "cpu rc=$? wall=$(( $(date +%s) - start ))s"
tail -3 $OUT/cpu.log
python3 benchmarks/phase_times.py $OUT/smoke-gpu $OUT/smoke-cpu 2>&1 | tail -12
