"""Hand-run scale benchmark: the token-state store and featurization on a local Dask cluster.

Parts (``--part``):

``store``
    Real MiniLM token states of ``--n-real`` distinct VADER texts, stored under 100,000
    distinct keys (text i's states for key i mod n-real, so sizes follow the real length
    distribution without 100,000 forward passes). Write and read throughput and files at
    rest for three layouts: the package's SQLite store, one ``.npz`` shard per 1,000 texts
    (read one member at a time; reads timed on 5,000 and scaled), and the per-text
    ``torch.save`` files of the old DiskCache (copied here for the comparison; the package
    no longer has it). Also the cost of the
    copy that ``transform`` makes of every output.
``local`` / ``cluster``
    ``featurize_to_store`` of ``--n`` VADER texts (repeated with a numbered suffix, so all
    distinct) through MiniLM: in this process with 2 torch threads, or on a local Dask
    cluster of 2 worker processes with 1 thread each. Wall time, texts/s, and the client's
    peak resident memory over its memory before the call.

Run each part in its own process (the driver does: ``python benchmarks/scale.py``), e.g.::

    OMP_NUM_THREADS=1 python benchmarks/scale.py --part store
    python benchmarks/scale.py --part local --n 10000
    python benchmarks/scale.py --part cluster --n 10000

Results are printed as Markdown rows and appended to ``benchmarks/RESULTS.md`` (## Scale).
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from sklearn_relish import featurize_to_store
from sklearn_relish._backbones import MINILM
from sklearn_relish._cache import CachedStates
from sklearn_relish._featurizer import LLMFeaturizer
from sklearn_relish._store import TokenStateStore
from sklearn_relish.datasets import load_vader

RESULTS = Path(__file__).with_name("RESULTS.md")
SHARD = 1000
NPZ_READ_SAMPLE = 5000  # npz reads are timed on this many and scaled up


class OldDiskCache:
    """The package's former on-disk cache (one ``torch.save`` file per text), for comparison."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def _path(self, key):
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key):
        path = self._path(key)
        if not path.exists():
            return None
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return CachedStates(payload["states"], bool(payload["truncated"]))

    def put(self, key, entry):
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(handle)
        try:
            torch.save({"states": entry.states, "truncated": entry.truncated}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def corpus(n: int) -> list[str]:
    texts: list[str] = []
    for name in ("tweets", "nyt", "movies", "amazon"):
        texts += list(load_vader(name, return_X_y=True)[0])
    return [texts[i % len(texts)] + ("" if i < len(texts) else f" ({i // len(texts)})")
            for i in range(n)]


def files_under(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def bytes_under(folder: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def part_store(args) -> list[str]:
    N_KEYS = args.keys  # noqa: N806
    torch.set_num_threads(1)
    texts = corpus(args.n_real)
    start = time.perf_counter()
    featurizer = LLMFeaturizer(MINILM, layer=-1, cache=False)
    states = featurizer.transform(texts, "single")
    featurize_s = time.perf_counter() - start
    entries = [CachedStates(s, False) for s in states]
    keys = [f"{i:064x}" for i in range(N_KEYS)]
    entry = [entries[i % len(entries)] for i in range(N_KEYS)]
    payload_mb = sum(e.nbytes for e in entry) / 1e6
    rows = []
    root = Path(tempfile.mkdtemp(prefix="relish-scale-", dir=args.tmp))
    try:
        for layout in ("sqlite store", "npz shards (1,000 texts)", "per-text .pt (old)"):
            folder = root / layout.split()[0]
            write_s, read_s, ok = run_layout(layout, folder, keys, entry)
            rows.append(f"| {layout} | {N_KEYS:,} | {payload_mb:,.0f} | {files_under(folder):,} "
                        f"| {bytes_under(folder) / 1e6:,.0f} | {N_KEYS / write_s:,.0f} "
                        f"| {N_KEYS / read_s:,.0f} | {ok} |")
            print(rows[-1], flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    for e in entry:
        e.states.clone()
    clone_s = time.perf_counter() - start
    rows.append(f"\nCopy of every output by `transform`: {clone_s / N_KEYS * 1e6:.1f} us per text "
                f"({N_KEYS:,} texts in {clone_s:.2f} s); featurizing cost "
                f"{featurize_s / len(texts) * 1e6:,.0f} us per text here "
                f"({len(texts):,} texts, 1 thread).")
    print(rows[-1], flush=True)
    return ["| layout | texts | payload MB | files at rest | MB at rest | write texts/s "
            "| read texts/s | all read intact |", "|---|---|---|---|---|---|---|---|", *rows]


def run_layout(layout, folder, keys, entry):
    folder.mkdir(parents=True)
    order = np.random.default_rng(0).permutation(len(keys))  # reads in another order
    if layout.startswith("sqlite"):
        store = TokenStateStore(folder)
        start = time.perf_counter()
        for s in range(0, len(keys), SHARD):
            store.put_many(zip(keys[s:s + SHARD], entry[s:s + SHARD], strict=True))
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        got = 0
        for s in range(0, len(keys), SHARD):  # a transform call's worth at a time
            batch = [keys[i] for i in order[s:s + SHARD]]
            got += len(store.get_many(batch))
        return write_s, time.perf_counter() - start, got == len(keys)
    if layout.startswith("npz"):
        start = time.perf_counter()
        for s in range(0, len(keys), SHARD):
            np.savez(folder / f"{s // SHARD}.npz",
                     **{k: e.states.numpy() for k, e in zip(keys[s:s + SHARD],
                                                            entry[s:s + SHARD], strict=True)})
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        sample = order[:NPZ_READ_SAMPLE]  # each read parses a zip directory: slow, so sample
        got = 0
        for i in sample:
            with np.load(folder / f"{i // SHARD}.npz") as shard:  # reads one member
                got += shard[keys[i]].shape[1] > 0
        read_s = (time.perf_counter() - start) * len(keys) / len(sample)
        return write_s, read_s, got == len(sample)
    disk = OldDiskCache(folder)
    start = time.perf_counter()
    for k, e in zip(keys, entry, strict=True):
        disk.put(k, e)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    got = sum(disk.get(keys[i]) is not None for i in order)
    return write_s, time.perf_counter() - start, got == len(keys)


class PeakRSS:
    """Samples this process's resident memory every 50 ms."""

    def __enter__(self):
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        ticks = 0
        while not self.done.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)
            ticks += 1
            if ticks % 1200 == 0:  # a line a minute, so a long run shows memory as it goes
                print(f"  client peak so far {(self.peak - self.base) / 1e6:,.0f} MB over its "
                      f"start ({ticks // 1200} min)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def part_featurize(args) -> list[str]:
    texts = corpus(args.n)
    folder = Path(tempfile.mkdtemp(prefix="relish-scale-", dir=args.tmp))
    try:
        if args.part == "cluster":
            import distributed

            torch.set_num_threads(1)
            cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                               processes=True, dashboard_address=":0")
            client = distributed.Client(cluster)
            # Load the backbone on both workers first, as one-process mode does below.
            featurize_to_store(corpus(64)[::-1], folder / "warm", client=client,
                               chunk_size=32, backbone=MINILM, layer=-1)
        else:
            torch.set_num_threads(2)
            client = None
            featurize_to_store(corpus(64)[::-1], folder / "warm", backbone=MINILM, layer=-1)
        with PeakRSS() as memory:
            start = time.perf_counter()
            counts = featurize_to_store(texts, folder / "store", client=client,
                                        chunk_size=args.chunk, backbone=MINILM, layer=-1)
            seconds = time.perf_counter() - start
        if client is not None:
            client.close()
            cluster.close()
        mode = ("local Dask cluster, 2 workers x 1 thread" if args.part == "cluster"
                else "one process, 2 torch threads")
        row = (f"| {mode} | {counts['computed']:,} | {seconds:,.0f} | "
               f"{counts['computed'] / seconds:,.1f} | {(memory.peak - memory.base) / 1e6:,.0f} | "
               f"{files_under(folder / 'store')} |")
        print(row, flush=True)
        return [row]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["store", "local", "cluster", "all"], default="all")
    parser.add_argument("--n", type=int, default=10_000, help="texts featurized (local/cluster)")
    parser.add_argument("--n-real", type=int, default=2_000, help="texts run through MiniLM "
                        "for the store part")
    parser.add_argument("--keys", type=int, default=100_000, help="texts stored (store part)")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--tmp", default=None, help="where the stores go (default: $TMPDIR)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.part == "all":
        for part in ("store", "local", "cluster"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--part", part], check=True)
        return
    lines = part_store(args) if args.part == "store" else part_featurize(args)
    if not args.no_write:
        command = "python benchmarks/scale.py " + shlex.join(sys.argv[1:])
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        with RESULTS.open("a") as out:
            out.write(f"\n<!-- scale.py part={args.part}: `{command}`, "
                      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                      f"{os.cpu_count()} CPUs shared with other processes, "
                      f"process peak RSS {peak_mb:,.0f} MB -->\n")
            out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
