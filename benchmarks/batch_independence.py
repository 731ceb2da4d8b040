"""How far a prediction moves with its batch: alone, in one batch, in batches of 3.

MiniLM on text pairs (the test suite's 16 texts, targets on -3..3), float32 and bfloat16,
CPU, no cache (each call featurizes anew). The README's "does not depend on its batch"
caveat quotes these figures. Run: ``python benchmarks/batch_independence.py``.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TARGETS, TEXTS, small_regressor  # noqa: E402

pairs = list(zip(TEXTS, TEXTS[::-1], strict=True))
for dtype in ("float32", "bfloat16"):
    model = small_regressor("embedded:all-MiniLM-L6-v2", backbone_dtype=dtype,
                            cache=False).fit(pairs, TARGETS)
    batch = model.predict(pairs)
    alone = np.array([model.predict([pair])[0] for pair in pairs])
    threes = model.set_params(featurize_batch_size=3).predict(pairs)
    print(f"{dtype}: alone vs one batch {np.abs(batch - alone).max():.2g}, "
          f"batches of 3 vs one batch {np.abs(batch - threes).max():.2g}")
