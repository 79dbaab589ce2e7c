#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run of a few minutes, for a session that is lent one: the engine on
# the GPU, its CUDA-graph decode and its compiled decode against full recomputation on the CPU, then the
# pretraining issue's MFU target (GPT-2 124M at T=1024 in bf16, compiled, against transformers in the same run;
# the JSON line's ours_mfu).
# Runs lmstack from src/ with the machine's own torch, transformers and pytest: nothing to install.
#
#     bash bench/gpu_check.sh            # PY=python3 by default
set -uo pipefail
PY=${PY:-python3}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1
"$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/infer/test_engine_compiled.py -k "gpu or cuda_graph"
tests_rc=$?
"$PY" bench/train_throughput.py --device cuda --compile --layers 12 --width 768 --vocab 50304 --seq 1024 \
    --batch 16 --rounds 3 --steps 10
exit $(( tests_rc || $? ))
