"""The mmap threshold raised while a Dask worker (MALLOC_TRIM_THRESHOLD_ set) runs the LLM."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from sklearn_relish import _allocator

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the tuning is glibc's")

# Page faults of allocating and freeing a 4 MiB tensor 30 times: a fresh mmap faults in
# every page each time; a chunk reused from the heap does not.
PROBE = """
import resource, torch
from sklearn_relish._allocator import large_tensors_on_the_heap

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(30):
        tensor = torch.empty(1 << 20).fill_(1.0)
        del tensor
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

outside = faults()
with large_tensors_on_the_heap():
    faults()  # the heap grows once
    inside = faults()
print(outside, inside)
"""


def _faults(env: dict[str, str]) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout
    outside, inside = map(int, out.split())
    return outside, inside


@glibc_only
def test_dask_worker_environment_gets_large_tensors_from_the_heap():
    outside, inside = _faults({"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert outside > 10_000  # 30 x 1,024 pages: every allocation was a fresh mmap
    assert inside < outside / 10


def test_threads_share_the_setting_and_the_last_one_out_restores_it(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    calls = []

    class FakeLibc:  # records the calls instead of changing this test process's allocator
        def mallopt(self, param, value):
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(_allocator, "_tunable_glibc", FakeLibc)
    with _allocator.large_tensors_on_the_heap():
        with _allocator.large_tensors_on_the_heap():  # a second task in another thread
            pass
        assert calls == [("mallopt", _allocator.M_MMAP_THRESHOLD, _allocator.HEAP_CEILING),
                         ("mallopt", _allocator.M_TRIM_THRESHOLD, _allocator.KEEP_WHILE_RUNNING)]
    assert calls[2:] == [("mallopt", _allocator.M_MMAP_THRESHOLD, _allocator.GLIBC_DEFAULT),
                         ("mallopt", _allocator.M_TRIM_THRESHOLD, 65536),  # Dask's, restored
                         ("trim", 0)]
    assert _allocator._users == 0


def test_nothing_changes_without_the_trim_setting(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert _allocator._tunable_glibc() is None
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")  # the user's own choice stays
    assert _allocator._tunable_glibc() is None
    with _allocator.large_tensors_on_the_heap():
        assert _allocator._users == 0
