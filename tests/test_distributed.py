"""Featurization and grid search on a local Dask cluster (2 worker processes, 1 thread each)."""

from __future__ import annotations

import gc
import time
import uuid
from collections import deque

import joblib
import numpy as np
import pytest
from conftest import TARGETS, TEXTS, small_regressor
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_relish import _backbones, cache_info, featurize_to_store
from sklearn_relish._store import TokenStateStore

distributed = pytest.importorskip("distributed")


def _n_loads() -> int:
    return _backbones.N_LOADS


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as client:
            yield client


def worker_llm_texts(client) -> int:
    return sum(info["llm_texts"] for info in client.run(cache_info).values())


def test_cluster_featurizes_each_distinct_text_once_into_the_store(client, tiny_llama, tmp_path):
    texts = TEXTS + TEXTS[:5]  # duplicates run once
    before = worker_llm_texts(client)
    counts = featurize_to_store(texts, tmp_path, client=client, chunk_size=3,
                                max_in_flight=2, backbone=tiny_llama)
    assert counts == {"texts": len(texts), "distinct": len(set(TEXTS)),
                      "computed": len(set(TEXTS))}
    assert worker_llm_texts(client) - before == len(set(TEXTS))
    assert len(TokenStateStore(tmp_path)) == len(set(TEXTS))
    # Each worker read the backbone from disk at most once, for all its chunks.
    loads = client.run(_n_loads).values()
    assert all(n <= 1 for n in loads) and sum(loads) >= 1
    assert cache_info()["llm_texts"] == 0  # the client ran no LLM and holds no states
    assert cache_info()["entries"] == 0

    again = featurize_to_store(texts, tmp_path, client=client, backbone=tiny_llama)
    assert again["computed"] == 0

    # A fit here with the same featurization parameters reads everything from the store.
    small_regressor(tiny_llama, cache_dir=str(tmp_path)).fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == 0


def _holds(value, marker: str, data: bytes) -> bool:
    if isinstance(value, str):
        return marker in value
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return data in bytes(value)
        except ValueError:  # a released memoryview (seen under CI): it holds nothing
            return False
    return False


def _objects_holding(marker: str) -> int:
    """Tracked containers in this process holding a string or bytes that contain marker."""
    data = marker.encode()
    count = 0
    for obj in gc.get_objects():
        if type(obj) not in (dict, list, tuple, set, deque):  # plain containers only
            continue
        for _ in range(3):
            try:
                values = obj.values() if type(obj) is dict else obj
                count += any(_holds(v, marker, data) for v in values)
                break
            except RuntimeError:  # changed by distributed's event-loop thread meanwhile
                continue
        else:
            count += 1  # could not be read: assume it holds one, and look again later
    return count


def test_client_keeps_no_texts_once_their_chunk_is_done(client, tiny_llama, tmp_path):
    # distributed logs the last 1,000 messages of every stream (client to scheduler,
    # scheduler to worker; the LocalCluster's scheduler lives in this process), so texts
    # sent as task arguments stayed alive here: memory grew with the corpus.
    marker = f"chunk-text-{uuid.uuid4().hex}"  # made here: not in any source line cached
    texts = [f"{marker} number {i}" for i in range(40)]
    featurize_to_store(texts, tmp_path, client=client, chunk_size=10, backbone=tiny_llama)
    assert len(TokenStateStore(tmp_path)) == len(texts)
    del texts
    # Messages still in flight may hold a chunk for a moment (longer on a loaded machine);
    # the logs held them for good.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        gc.collect()
        if _objects_holding(marker) == 0:
            break
        time.sleep(0.2)
    assert _objects_holding(marker) == 0


def test_grid_search_on_the_cluster_reads_the_store(client, tiny_llama, tmp_path):
    texts, targets = TEXTS + TEXTS[:4], TARGETS + TARGETS[:4]
    counts = featurize_to_store(texts, tmp_path, client=client, backbone=tiny_llama)
    before = worker_llm_texts(client)
    search = GridSearchCV(small_regressor(tiny_llama, cache_dir=str(tmp_path)),
                          {"lr": [1e-3, 1e-2], "loss": ["huber", "mse"]},
                          cv=KFold(2, shuffle=True, random_state=0), n_jobs=-1)
    with joblib.parallel_backend("dask"):
        search.fit(texts, targets)
    # Across all workers and the client's refit, the LLM ran on the distinct texts only,
    # all of them inside featurize_to_store.
    assert counts["computed"] == counts["distinct"] == len(set(texts))
    assert worker_llm_texts(client) - before == 0
    assert cache_info()["llm_texts"] == 0
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_same_results_in_process_and_on_the_cluster(client, tiny_llama, tmp_path):
    local = featurize_to_store(TEXTS, tmp_path / "local", backbone=tiny_llama, layer=1)
    remote = featurize_to_store(TEXTS, tmp_path / "remote", client=client,
                                backbone=tiny_llama, layer=1)
    assert local == remote
    a = small_regressor(tiny_llama, layer=1, cache_dir=str(tmp_path / "local")).fit(TEXTS, TARGETS)
    b = small_regressor(tiny_llama, layer=1, cache_dir=str(tmp_path / "remote")).fit(TEXTS,
                                                                                     TARGETS)
    np.testing.assert_allclose(a.predict(TEXTS), b.predict(TEXTS), atol=1e-6)
    assert cache_info()["llm_texts"] == len(set(TEXTS))  # the local fill only


def test_a_relative_store_is_the_clients_folder_on_every_worker(client, tiny_llama, tmp_path,
                                                                 monkeypatch):
    # Workers started by a scheduler run in other folders: "store" there was another
    # store, filled while the client's stayed empty and the next fit ran the LLM again.
    import os

    (tmp_path / "client").mkdir()
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "client")
    old = client.run(os.getcwd)
    client.run(os.chdir, str(tmp_path / "worker"))
    try:
        counts = featurize_to_store(TEXTS[:4], "store", client=client, backbone=tiny_llama)
    finally:
        for address, folder in old.items():
            client.run(os.chdir, folder, workers=[address])
    assert counts["computed"] == 4
    assert len(TokenStateStore(tmp_path / "client" / "store")) == 4
    assert not (tmp_path / "worker" / "store").exists()


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_store_name_is_refused_not_taken_for_the_working_folder(tiny_llama, empty,
                                                                        tmp_path, monkeypatch):
    # featurize_to_store("") filled ./states.sqlite while a fit with cache_dir="" used no
    # store at all and ran the LLM on every text again.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="store_dir must name a folder"):
        featurize_to_store(TEXTS, empty, backbone=tiny_llama)
    with pytest.raises(ValueError, match="cache_dir must name a folder"):
        small_regressor(tiny_llama, cache_dir=empty).fit(TEXTS, TARGETS)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_fail_before_any_work(tiny_llama, tmp_path):
    with pytest.raises(TypeError, match="do not affect featurization"):
        featurize_to_store(TEXTS, tmp_path, backbone=tiny_llama, lr=0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        featurize_to_store(TEXTS, tmp_path, backbone=tiny_llama, chunk_size=0)
    for bad in (True, 2.0, np.int64(0)):
        with pytest.raises(ValueError, match="chunk_size"):
            featurize_to_store(TEXTS, tmp_path, backbone=tiny_llama, chunk_size=bad)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be used"):
        featurize_to_store(TEXTS, blocker, backbone=tiny_llama)
    # A layer past the depth, from the config: no weights loaded, no store left behind.
    loads = _backbones.N_LOADS
    _backbones.clear_backbones()
    with pytest.raises(ValueError, match="layer=99 is out of range"):
        featurize_to_store(TEXTS, tmp_path / "store", backbone=tiny_llama, layer=99)
    assert not (tmp_path / "store").exists()
    assert _backbones.N_LOADS == loads
    assert cache_info()["llm_texts"] == 0


def test_a_store_that_reads_but_cannot_be_written_fails_before_any_text(tiny_llama, tmp_path):
    # Reading the store up front passed a read-only one; the first chunk's LLM work was
    # then lost to an internal error, on every worker of a cluster.
    import sqlite3

    from sklearn_relish._store import FILENAME, TokenStateStore

    assert len(TokenStateStore(tmp_path)) == 0
    with sqlite3.connect(tmp_path / FILENAME) as connection:
        connection.execute("CREATE TRIGGER read_only BEFORE INSERT ON states "
                           "BEGIN SELECT RAISE(ABORT, 'read-only store'); END")
    with pytest.raises(ValueError, match="cannot be used.*read-only store"):
        featurize_to_store(TEXTS, tmp_path, backbone=tiny_llama, chunk_size=4)
    assert cache_info()["llm_texts"] == 0


def test_numpy_counts_are_taken(tiny_llama, tmp_path):
    counts = featurize_to_store(TEXTS[:5], tmp_path, backbone=tiny_llama,
                                chunk_size=np.int64(2), max_in_flight=np.int32(1),
                                verify=np.bool_(True))
    assert counts == {"texts": 5, "distinct": 5, "computed": 5}


def test_a_chunk_lost_with_its_worker_is_sent_again(tiny_llama, tmp_path, monkeypatch):
    # A scattered chunk lived on one worker only: when that worker died (out of memory,
    # preempted), distributed cancelled its task and the whole run failed with
    # "FutureCancelledError ... already forgotten", a chunk's work lost for every other.
    import os

    from sklearn_relish import RelishTextRegressor

    marker = str(tmp_path / "died")

    class DiesOnce:  # defined here, so it travels to the workers by value
        def __init__(self, inner):
            self.inner = inner

        def layer_index(self):  # checked before any chunk is sent
            return self.inner.layer_index()

        def fill_store(self, texts, kind, verify):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # the worker process dies mid-task, as under the OOM killer
            return self.inner.fill_store(texts, kind, verify)

    to_train_on = RelishTextRegressor._featurizer_to_train_on
    monkeypatch.setattr(RelishTextRegressor, "_featurizer_to_train_on",
                        lambda self: DiesOnce(to_train_on(self)))
    store = tmp_path / "store"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as own_client:
            counts = featurize_to_store(TEXTS, store, client=own_client, chunk_size=4,
                                        max_in_flight=1, backbone=tiny_llama)
    assert os.path.exists(marker)  # a worker did die
    assert counts == {"texts": len(TEXTS), "distinct": len(TEXTS), "computed": len(TEXTS)}
    assert len(TokenStateStore(store)) == len(TEXTS)


def test_a_client_that_is_not_one_is_refused_before_the_store_is_made(tiny_llama, tmp_path):
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        featurize_to_store(TEXTS, tmp_path / "store", client="scheduler:8786",
                           backbone=tiny_llama)
    assert not (tmp_path / "store").exists()


def test_the_store_is_checked_where_the_workers_write(client, tiny_llama, tmp_path,
                                                      monkeypatch):
    # Checked in the client's process, a folder only the workers could see (/shared on a
    # laptop driving a cluster) was refused, and one the client could create was left
    # behind on the client's machine, empty. The check runs on a worker now.
    def not_here(self):
        raise AssertionError("the store was opened in the client's process")

    monkeypatch.setattr(TokenStateStore, "check_writable", not_here)  # here only, not on workers
    counts = featurize_to_store(TEXTS[:4], tmp_path, client=client, backbone=tiny_llama)
    assert counts["distinct"] == 4
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be used"):  # the worker's refusal, clearly
        featurize_to_store(TEXTS, blocker, client=client, backbone=tiny_llama)
