#!/usr/bin/env bash
# On a lent GPU machine (carry .gpu, built here by benchmarks/gpu_carry.sh; that machine reaches no registry and
# holds no model weights): the whole smoke suite on CUDA from the carried MiniLM cache, three ways, each timed:
#   1. `harness run suites/smoke.toml --workers 4` (seeds 0-2, every candidate; four processes sharing the one GPU),
#      its verdicts and numbers compared with the CPU run carried in .gpu/cpu-report.json (compare_reports.py);
#   2. `pytest -n 4 --dist loadgroup suites/smoke.toml` (pytest-xdist), compared with 1;
#   3. serial, seed 0: the wall time per phase (benchmarks/phase_times.py).
# Everything lands in $OUT. Usage there: bash benchmarks/gpu_smoke.sh
source benchmarks/gpu_setup.sh  # wheels, data, cache, and run()
run workers4 200 python3 -m harness run suites/smoke.toml --require-gpu --workers 4 --out "$OUT/workers4" --no-progress --no-github-summary
tail -3 "$OUT/workers4.log"
python3 benchmarks/compare_reports.py .gpu/cpu-report.json "$OUT/workers4" | tail -8
run xdist 200 python3 -m pytest -p harness.pytest_plugin -n 4 --dist loadgroup -q -p no:cacheprovider suites/smoke.toml --gate-out "$OUT/xdist"
tail -4 "$OUT/xdist.log"
python3 benchmarks/compare_reports.py "$OUT/workers4" "$OUT/xdist/smoke" | tail -4  # --gate-out writes a folder per suite
run serial 150 python3 -m harness run suites/smoke.toml --seeds 0 --require-gpu --out "$OUT/serial" --no-progress --no-github-summary
tail -3 "$OUT/serial.log"
python3 benchmarks/phase_times.py "$OUT/serial" 2>&1 | tail -9
rm -rf "$OUT"/*/seed-* "$OUT"/*/plots "$OUT"/*/runs  # checkpoints and plots: not needed back
