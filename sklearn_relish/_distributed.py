"""Featurize a corpus into a shared token-state store, on a Dask cluster or in this process.

Dask rather than Ray: Dask is the engine scikit-learn already reaches through joblib's
``dask`` backend (so the same cluster runs ``GridSearchCV``), and ``dask`` plus
``distributed`` are two pure-Python wheels of 2.5 MB together, where Ray is one 79 MB
compiled wheel per platform (measured with ``pip download --no-deps``, 2026-11).
"""

from __future__ import annotations

import os
from concurrent.futures import CancelledError
from typing import Any

import numpy as np

from ._allocator import large_tensors_on_the_heap
from ._inputs import check_prompt, check_texts, is_count
from ._llm_params import store_folder
from ._store import StoreUnavailable, TokenStateStore


def _fill(featurizer, texts: list, kind: str, verify: bool = False) -> dict[str, int]:
    # Runs on a worker: the featurizer arrives without weights and loads the backbone from
    # the process-wide registry, so each worker process reads it from disk once.
    with large_tensors_on_the_heap():
        return {"texts": len(texts), "computed": featurizer.fill_store(texts, kind, verify)}


def _check_writable(store_dir: str) -> None:
    TokenStateStore(store_dir).check_writable()


def featurize_to_store(
    X: Any,
    store_dir: str | os.PathLike,
    *,
    client: Any = None,
    chunk_size: int = 1000,
    max_in_flight: int | None = None,
    verify: bool = False,
    **params: Any,
) -> dict[str, int]:
    """Run the backbone once over every distinct text and keep the states in ``store_dir``.

    A later ``RelishTextRegressor(..., cache_dir=store_dir)`` with the same featurization
    parameters, in any process that can read ``store_dir``, then runs the LLM on no text
    twice: a fit or a ``GridSearchCV`` reads the store.

    Parameters
    ----------
    X : list of str, list of (str, str), array-like or DataFrame
        Texts or text pairs, as for :meth:`RelishTextRegressor.fit`.
    store_dir : str or path-like
        The folder to pass as ``cache_dir`` later. Every worker must see it at the same
        path (a shared file system with POSIX locks on a multi-machine cluster).
    client : distributed.Client or None, default=None
        Where to run. ``None`` featurizes in this process. With a client, chunks of texts go
        to the workers, at most ``max_in_flight`` at a time; each worker writes its states
        to the store and sends back only counts, so the client never holds the corpus's
        states. Give each GPU one worker with one thread (see the README).
    chunk_size : int, default=1000
        Texts per task: one store transaction and one unit of lost work if a worker dies.
    max_in_flight : int or None, default=None
        Chunks submitted but not finished; ``None`` means twice the number of workers.
    verify : bool, default=False
        Read and check every row the store already holds for these texts, and recompute
        the damaged ones. Off, only the store's index is read (a re-run over a large store
        stays cheap), and a fit that meets a damaged row recomputes that text itself.
    **params
        Featurization parameters of :class:`RelishTextRegressor` (``backbone``, ``layer``,
        ``max_length``, ``prompt``, ``featurize_batch_size``, ``device``,
        ``backbone_dtype``, ``trust_remote_code``, ``backbone_kwargs``,
        ``train_top_layers``, ``verbose``), with its defaults. With ``train_top_layers``
        the store gets the states under the trained blocks, which such a fit reads (only
        the backbone's config is read here to find that layer).

    Returns
    -------
    counts : dict
        ``texts`` (rows given), ``distinct`` (distinct rows) and ``computed`` (texts the
        store lacked and now holds; empty texts among them need no LLM). A chunk sent
        again after its worker died counts only what the second run computed: texts the
        lost worker had committed are in the store but not in ``computed``.

    Raises
    ------
    ValueError
        Before any text runs, if ``store_dir`` cannot be written (a file, read-only, a
        store of a newer format, locked past the busy timeout).
    OSError
        If the store fails midway (a full disk): what was committed before stays.

    Examples
    --------
    >>> from distributed import Client  # doctest: +SKIP
    >>> featurize_to_store(texts, "/shared/relish", client=Client("scheduler:8786"),
    ...                    backbone="embedded:SmolLM2-135M-Instruct-Q4_1")  # doctest: +SKIP
    """
    from ._estimator import RelishTextRegressor

    if not is_count(chunk_size, 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    if max_in_flight is not None and not is_count(max_in_flight, 1):
        raise ValueError(f"max_in_flight must be a positive int or None, got {max_in_flight!r}.")
    if not isinstance(verify, bool | np.bool_):
        raise TypeError(f"verify must be True or False, got {verify!r}.")
    chunk_size, verify = int(chunk_size), bool(verify)
    max_in_flight = None if max_in_flight is None else int(max_in_flight)
    unknown = sorted(set(params) - _FEATURIZATION_PARAMS)
    if unknown:
        raise TypeError(
            f"featurize_to_store got parameters that do not affect featurization: {unknown}; "
            f"it takes {sorted(_FEATURIZATION_PARAMS)}."
        )
    if client is not None and not all(hasattr(client, name) for name in ("scatter", "submit")):
        raise TypeError(f"client must be a distributed.Client or None, got {client!r}.")
    store_dir = store_folder(store_dir, "store_dir")  # one folder on every worker
    # The estimator's own defaults and validation, so the keys match a later fit exactly.
    estimator = RelishTextRegressor(**params, cache=True, cache_dir=store_dir)
    estimator._validate_params()
    texts, kind = check_texts(X)
    check_prompt(estimator.prompt, kind)
    # From the config alone: a layer past the backbone's depth is refused here, not by
    # every worker after loading the weights, and before the store is made.
    featurizer = estimator._featurizer_to_train_on()
    featurizer.layer_index()
    try:  # fail here, clearly, rather than on every worker after its first chunk
        if client is None:
            _check_writable(store_dir)
        else:  # the workers' view of the folder, which the client may not share
            client.submit(_check_writable, store_dir, pure=False).result()
    except StoreUnavailable as error:
        raise ValueError(f"store_dir={store_dir!r} cannot be used: {error}") from error

    distinct = list(dict.fromkeys(texts))  # a text in two chunks would race to run twice
    chunks = [distinct[i:i + chunk_size] for i in range(0, len(distinct), chunk_size)]
    if client is None:
        computed = sum(_fill(featurizer, chunk, kind, verify)["computed"] for chunk in chunks)
    else:
        computed = _run_on_cluster(client, featurizer, chunks, kind, max_in_flight, verify)
    return {"texts": len(texts), "distinct": len(distinct), "computed": computed}


def _run_on_cluster(client, featurizer, chunks: list[list], kind: str,
                    max_in_flight: int | None, verify: bool) -> int:
    from distributed import as_completed

    if max_in_flight is None:
        max_in_flight = 2 * max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    # Texts travel by scatter, not inside the task: distributed logs the last 1,000
    # messages of each client-scheduler and scheduler-worker stream (its
    # ``admin.low-level-log-length``), so chunks sent as task arguments stayed alive on
    # the client and scheduler, about 0.3 MB per 1,000 texts. Scattered data goes by RPC
    # and is freed with its future.
    shared = {}  # the featurizer's future: on every worker, sent again if all were lost
    in_flight = {}  # task key -> (chunk index, the chunk's scattered future, the task)
    resent = [0] * len(chunks)

    def submit(index: int):
        if shared.get("featurizer") is None or shared["featurizer"].status != "finished":
            [shared["featurizer"]] = client.scatter([featurizer], broadcast=True, hash=False)
        [texts] = client.scatter([chunks[index]], hash=False)
        task = client.submit(_fill, shared["featurizer"], texts, kind, verify, pure=False)
        in_flight[task.key] = (index, texts, task)
        return task

    upcoming = iter(range(len(chunks)))
    pending = as_completed()
    computed = 0
    try:
        for index in upcoming:
            pending.add(submit(index))
            if pending.count() >= max_in_flight:
                break
        for future in pending:
            index, texts, _ = in_flight.pop(future.key)
            texts.release()
            try:
                computed += future.result()["computed"]  # a task's own error is raised here
            except CancelledError:
                # A scattered chunk lives on one worker only: when that worker dies (out of
                # memory, preempted) the chunk is gone and distributed cancels the task
                # ("lost dependencies") instead of retrying it. The client still has the
                # texts: send them again.
                if resent[index] == _RESENDS:
                    raise
                resent[index] += 1
                pending.add(submit(index))
                continue
            finally:
                future.release()
            index = next(upcoming, None)
            if index is not None:
                pending.add(submit(index))
    finally:  # on an error, no queued chunk starts (running ones finish and commit)
        if in_flight:
            client.cancel([task for _, _, task in in_flight.values()])
        for _, texts, _ in in_flight.values():
            texts.release()
        if "featurizer" in shared:
            shared["featurizer"].release()
    return computed


_RESENDS = 3  # times one chunk is sent again after the worker holding it was lost


_FEATURIZATION_PARAMS = {
    "backbone", "layer", "max_length", "prompt", "featurize_batch_size", "device",
    "backbone_dtype", "trust_remote_code", "backbone_kwargs", "train_top_layers", "verbose",
}
