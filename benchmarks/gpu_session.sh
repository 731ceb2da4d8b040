#!/usr/bin/env bash
# One prepared device session (the device tool's `run`, repository root): the 135M, 1B and 8B
# timings first (the reason to hold a GPU), then the CUDA path check, then the test suite.
#
# Prepare here first: `make device-carry` fills .device/ (ignored by git) with the skorch
# wheel the device machine lacks, SmolLM2's tokenizer files and the VADER data. Then run
#   bash benchmarks/gpu_session.sh      with carry=[".device"], timeout_s=450
# which leaves a 15-minute lease room for a second, shorter call. Each step has its own
# limit and writes as it goes, so a step cut short still returns what it finished.
# Back in $OUT (8 files at most): versions.txt, gpu_scale.md (append to RESULTS.md),
# gpu_scale.jsonl (one row per config, as measured), gpu_scale.log, check/ (report.json and
# two pickles; a CPU-only machine loads them once tests/conftest.py's build_tiny_llama has
# rebuilt their backbone at /tmp/relish-gpu-check/tiny-llama) and pytest.log (the whole log).
# The exit status is the first failing step's.
set -uo pipefail
OUT=${OUT:-/tmp/relish-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export SCIKIT_LEARN_DATA=$PWD/.device/scikit_learn_data
# The image's Python is python3 (the one holding CUDA torch); skorch is the one dependency
# it lacks: without it nothing below can run, so stop here.
python3 -m pip install -q --no-deps --no-index .device/wheels/*.whl || exit 1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import sys, torch, transformers, sklearn, skorch, numpy
print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers',
      transformers.__version__, '| scikit-learn', sklearn.__version__, '| skorch',
      skorch.__version__, '| numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/versions.txt"

timeout 240 python3 benchmarks/gpu_scale.py --tokenizer .device/tokenizer --no-write \
    --rows "$OUT/gpu_scale.jsonl" 2> "$OUT/gpu_scale.log" | tee "$OUT/gpu_scale.md"
scale=$?; echo "gpu_scale exit $scale"
timeout 45 python3 benchmarks/gpu_check.py --out "$OUT/check" >> "$OUT/gpu_scale.log" 2>&1
check=$?; echo "gpu_check exit $check: $(grep -h "GPU CHECK" "$OUT/gpu_scale.log")"

# The embedded backbones do not travel (over 64 MiB): their tests skip. pytest-xdist and
# pytest-timeout are on the image (KINDS.md): 8 workers, and no single test may hang the
# session; without them, one process (the suite took 216 s with 2 workers on 2 CPU cores).
PARALLEL=()
python3 -c "import xdist, pytest_timeout" 2>/dev/null && PARALLEL=(-n 8 --timeout 90)
timeout 120 python3 -m pytest -q -p no:cacheprovider "${PARALLEL[@]}" --durations 10 tests \
    > "$OUT/pytest.log" 2>&1
suite=$?; echo "pytest exit $suite"
tail -5 "$OUT/pytest.log"
for status in "$scale" "$check" "$suite"; do [ "$status" -ne 0 ] && exit "$status"; done
exit 0
