#!/usr/bin/env bash
# One prepared device session (the device tool's `run`, repository root, 10 minutes at most):
# the test suite on CUDA, then benchmarks/gpu_scale.py on the 135M, 1B and 8B configs.
#
# Prepare here first: `make device-carry` fills .device/ (ignored by git) with the skorch
# wheel the device machine lacks, SmolLM2's tokenizer files and the VADER data. Then run
#   bash benchmarks/gpu_session.sh      with carry=[".device"], timeout_s=580
# Results come back in $OUT: pytest.log and gpu_scale.md (append the latter to RESULTS.md).
set -uo pipefail
OUT=${OUT:-/tmp/relish-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export SCIKIT_LEARN_DATA=$PWD/.device/scikit_learn_data
python -m pip install -q --no-deps --no-index .device/wheels/*.whl
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# The embedded backbones do not travel (over 64 MiB): their tests skip. Tests of optional
# extras the machine lacks (pyarrow, matplotlib for the CLI) may fail there: read the log.
timeout 300 python -m pytest -q -p no:cacheprovider tests 2>&1 | tail -40 > "$OUT/pytest.log"
tail -3 "$OUT/pytest.log"
timeout 250 python benchmarks/gpu_scale.py --tokenizer .device/tokenizer --no-write \
    | tee "$OUT/gpu_scale.md"
