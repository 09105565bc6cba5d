# Sourced by benchmarks/gpu_smoke.sh and benchmarks/gpu_suite.sh on a lent GPU machine (carrying .gpu, built by
# benchmarks/gpu_carry.sh): installs the carried wheels, unpacks the data, points the harness at the carried cache,
# and defines `run NAME LIMIT COMMAND...` (the command's output in $OUT/NAME.log, its exit status and wall time echoed).
set -u
python3 -V; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
pip install --quiet --no-deps --no-index --target /tmp/pylib .gpu/wheels/*.whl 2>&1 | tail -1
# Run from this checkout without installing it: harness.plugins is the repository's plugins/ folder.
[ -e harness/plugins ] || ln -s ../plugins harness/plugins
mkdir -p /tmp/data && tar xzf .gpu/beir-data.tgz -C /tmp/data  # -> /tmp/data/beir/{scifact,nfcorpus}
export PYTHONPATH=$PWD:/tmp/pylib HARNESS_DATA_DIR=/tmp/data/beir HARNESS_CACHE_DIR=$PWD/.gpu/cache HARNESS_PROGRESS_INTERVAL=60
run() {  # name, limit in seconds, command...
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc=$? wall=$(( $(date +%s) - start ))s"
}
