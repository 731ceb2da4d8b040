"""CUDA path check, run by hand on a machine with a GPU (CI has none).

Checks that ``device="auto"`` puts the backbone and the head on the GPU, that the backbone
runs in bfloat16 there, and that a GPU-trained model pickles and then loads and predicts in
a process that sees no GPU at all. The pickles and a report are written to ``--out``; the
tiny backbone stays at /tmp/relish-gpu-check/tiny-llama, so another, CPU-only machine loads
the pickles after ``build_tiny_llama`` (tests/conftest.py) has rebuilt it at that path.

    python benchmarks/gpu_check.py --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TARGETS, TEXTS, build_tiny_llama  # noqa: E402

from sklearn_relish import RelishTextRegressor  # noqa: E402

BACKBONE = Path("/tmp/relish-gpu-check/tiny-llama")
PARAMS = dict(latent_dim=16, n_heads=2, n_iterations=2, max_epochs=5, early_stopping=False,
              random_state=0)

LOAD_ON_CPU = """
import sys, json, joblib, torch
assert not torch.cuda.is_available(), "this process must not see a GPU"
model = joblib.load(sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps({"predictions": model.predict(texts).tolist(),
                  "head_device": str(next(model.net_.module_.parameters()).device),
                  "net_device": str(model.net_.device)}))
"""


def fit_on_gpu(dtype: str) -> tuple[RelishTextRegressor, dict]:
    model = RelishTextRegressor(str(BACKBONE), backbone_dtype=dtype, **PARAMS)
    model.fit(TEXTS, TARGETS)
    backbone = model.featurizer_.loaded.model
    facts = {
        "backbone_device": str(next(backbone.parameters()).device),
        "backbone_dtype": str(next(backbone.parameters()).dtype),
        "head_device": str(next(model.net_.module_.parameters()).device),
        "predictions": model.predict(TEXTS).tolist(),
    }
    return model, facts


def predict_without_gpu(path: Path) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", LOAD_ON_CPU, str(path), json.dumps(TEXTS)],
                            env=env, capture_output=True, text=True)
    if result.returncode:
        return {"error": result.stderr[-3000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: this check needs a GPU.")
    build_tiny_llama(BACKBONE)
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for dtype in ("auto", "float32"):
        model, facts = fit_on_gpu(dtype)
        path = args.out / f"gpu_model_{dtype}.joblib"
        joblib.dump(model, path)
        on_cpu = predict_without_gpu(path)
        reloaded = on_cpu.get("predictions", [np.nan] * len(TEXTS))
        gap = np.abs(np.subtract(facts["predictions"], reloaded)).max()
        report[dtype] = {**facts, "cpu_reload": on_cpu, "max_abs_gap_gpu_vs_cpu": float(gap),
                         "pickle_bytes": path.stat().st_size}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    ok = (report["auto"]["backbone_dtype"] == "torch.bfloat16"
          and report["auto"]["head_device"].startswith("cuda")
          and report["float32"]["max_abs_gap_gpu_vs_cpu"] < 1e-3)
    print("GPU CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
