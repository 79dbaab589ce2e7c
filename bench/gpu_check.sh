#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run of about seven minutes, for a session that is lent one:
#   1. the engine on the GPU, its CUDA-graph decode and its compiled decode against full recomputation on the CPU
#      (tests/infer/test_engine_compiled.py);
#   2. decode speed, eager and CUDA graphs, against transformers generate in the same run (bench/decode_gpu.py);
#   3. the pretraining issue's MFU target: GPT-2 124M at T=1024 in bf16, compiled, against transformers in the
#      same run, at micro-batch 16, 32 and 64 (bench/train_throughput.py; the JSON line's ours_mfu).
# Runs lmstack from src/ with the machine's own torch, transformers and pytest: nothing to install. Each part has
# its own time limit, so one that hangs leaves time to the next. Full logs go to $LOGS (default: $OUT, else
# ./gpu_check_logs); the end of each log and each part's time are printed.
#
#     bash bench/gpu_check.sh            # PY=python3 by default
set -uo pipefail
PY=${PY:-python3}
LOGS=${LOGS:-${OUT:-gpu_check_logs}}
mkdir -p "$LOGS"
export PYTHONPATH="src:bench${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
      torch.cuda.get_device_name(0))" || exit 1
failed=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $LOGS/NAME.log, print its end
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s (limit $limit s)"
    grep -v "it/s\]$" "$LOGS/$name.log" | tail -n 6
    [ "$rc" -eq 0 ] || failed=1
}
part gpu_tests 180 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/infer/test_engine_compiled.py \
    -k "gpu or cuda_graph"
part decode_gpu 120 "$PY" bench/decode_gpu.py
for batch in 16 32 64; do
    part "train_b$batch" 150 "$PY" bench/train_throughput.py --device cuda --compile --layers 12 --width 768 \
        --vocab 50304 --seq 1024 --batch "$batch" --rounds 3 --steps 10
done
exit "$failed"
