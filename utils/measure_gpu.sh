#!/usr/bin/env bash
# The README's GPU figures, measured in one place: bash utils/measure_gpu.sh OUT_DIR STAGE...
# Stages: device, tests, benchmark, compile, rehearsal, demo. Each writes OUT_DIR/<stage>.log.
set -uo pipefail
out=$1
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
for stage in "$@"; do
  echo "== $stage $(date -u +%FT%TZ)"
  case $stage in
    device) { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
              python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"; } ;;
    tests) python3 -m pytest -q -p no:cacheprovider ;;
    benchmark) python3 -m model.benchmark --variants=abcd ;;
    compile) python3 -m model.benchmark --variants=c --compile ;;
    rehearsal) python3 -m model.benchmark --rehearsal --fast --ranks=4 --data=/tmp/rehearsal &&
               python3 -m model.benchmark --rehearsal --ranks=4 --data=/tmp/rehearsal &&
               python3 -m model.benchmark --rehearsal --ranks=1 --data=/tmp/rehearsal ;;
    demo) for path in False True; do
            /usr/bin/time -f "demo, fast=$path: %e s" python3 main.py --demo --fast=$path --run_name=fast_$path \
              --results_dir=/tmp/demo --checkpoint_dir=/tmp/demo && cat /tmp/demo/fast_$path/metrics.md
          done ;;
    *) echo "unknown stage $stage" ;;
  esac 2>&1 | tee "$out/$stage.log" | grep -v -E "training:|loading|checking files" | tail -25
done
