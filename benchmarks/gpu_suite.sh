#!/usr/bin/env bash
# On a lent GPU machine (carry .gpu, built here by `bash benchmarks/gpu_carry.sh reports/gpu_cpu mpnet` from a CPU run
# of the GPU suite; that machine reaches no registry and holds no model weights): suites/gpu_suite.toml on CUDA from
# the carried MPNet cache, each run timed:
#   1. serial, seed 0: the wall time per phase (benchmarks/phase_times.py; "load" is the cache read: no encoder
#      runs there, the weights stay here);
#   2. `harness run suites/gpu_suite.toml --require-gpu --workers 4` (every seed, every candidate), its verdicts and
#      numbers compared with the CPU run carried in .gpu/cpu-report.json (compare_reports.py).
# Everything lands in $OUT. Usage there: bash benchmarks/gpu_suite.sh
source benchmarks/gpu_setup.sh  # wheels, data, cache, and run()
run serial 240 python3 -m harness run suites/gpu_suite.toml --seeds 0 --require-gpu --out "$OUT/serial" --no-progress --no-github-summary
tail -3 "$OUT/serial.log"
python3 benchmarks/phase_times.py "$OUT/serial" 2>&1 | tail -9
run workers4 300 python3 -m harness run suites/gpu_suite.toml --require-gpu --workers 4 --out "$OUT/workers4" --no-progress --no-github-summary
tail -3 "$OUT/workers4.log"
python3 benchmarks/compare_reports.py .gpu/cpu-report.json "$OUT/workers4" | tail -8
rm -rf "$OUT"/*/seed-* "$OUT"/*/plots "$OUT"/*/runs  # checkpoints and plots: not needed back
