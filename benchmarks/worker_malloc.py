"""Hand-run: MiniLM featurization seconds in a plain process and in a Dask worker.

Why ``sklearn_relish._allocator`` exists: Dask's nanny starts workers with
``MALLOC_TRIM_THRESHOLD_=65536``, which makes every large activation a fresh ``mmap``.
One thread, ``--n`` VADER tweets (last layer, cache off, backbone loaded and warmed first),
timed in this process, in a worker of a 1-worker ``LocalCluster`` as Dask starts it, and
in that worker inside ``large_tensors_on_the_heap`` (what ``featurize_to_store`` does)::

    OMP_NUM_THREADS=1 python benchmarks/worker_malloc.py --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import os


def featurize_seconds(n: int, guarded: bool = False) -> float:
    import time

    import torch

    from sklearn_relish._allocator import large_tensors_on_the_heap
    from sklearn_relish._backbones import MINILM
    from sklearn_relish._featurizer import LLMFeaturizer
    from sklearn_relish.datasets import load_vader

    torch.set_num_threads(1)
    texts = list(load_vader("tweets", return_X_y=True)[0][:n])
    featurizer = LLMFeaturizer(MINILM, layer=-1, cache=False, device="cpu")
    featurizer.transform(texts[:32], "single")  # load and warm up, untimed
    with large_tensors_on_the_heap() if guarded else contextlib.nullcontext():
        start = time.perf_counter()
        featurizer.transform(texts, "single")
        return time.perf_counter() - start


def main(argv=None) -> None:
    import distributed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    rows: dict[str, list[float]] = {}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        env = client.submit(os.environ.get, "MALLOC_TRIM_THRESHOLD_", pure=False).result()
        for _ in range(args.repeats):
            rows.setdefault("this process", []).append(featurize_seconds(args.n))
            for name, guarded in (("Dask worker", False), ("Dask worker, guarded", True)):
                seconds = client.submit(featurize_seconds, args.n, guarded, pure=False)
                rows.setdefault(name, []).append(seconds.result())
    print(f"{args.n} texts, 1 thread; the worker's MALLOC_TRIM_THRESHOLD_={env}")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")


if __name__ == "__main__":
    main()
