"""grain pipelines: shuffled, repeated, per-host sharded batches of prompt records.

`prompt_dataset` builds a `grain.MapDataset` whose element k is batch k of an endless stream:

    source -> shuffle (seeded; epoch e uses seed + e) -> repeat forever
           -> blocks of `batch_size` records -> blocks shard_index, shard_index + n, ...
              (host i of n), collated to {field: [values]}

Every host shuffles with the same seed, so the n hosts' batches k together are, in host order,
exactly the global batch k of `batch_size * n` records that one host would read alone: a
multi-host run trains on the same global batches as a single-host one, and each host's rows
are its contiguous block of them (the rows its devices hold, see `giftjax.distributed`).
Batches are dicts of Python lists (strings stay strings: tokenisation happens later, see
`giftjax.data.tokenize`); a batch may span two epochs.

`prompt_iterator` turns it into a `grain.DatasetIterator`, whose `get_state()` (a small dict)
goes into a checkpoint and whose `set_state()` resumes exactly where the saved iterator was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

__all__ = ["collate", "prompt_dataset", "prompt_iterator"]


def collate(records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Turns B records (dicts with the same keys) into one dict of B-long lists."""
    keys = list(records[0])
    for i, r in enumerate(records):
        if list(r) != keys:
            raise ValueError(f"record {i} of the batch has keys {list(r)}; record 0 has {keys}.")
    return {k: [r[k] for r in records] for k in keys}


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value >= high):
        bounds = f"{low} <= {name}" + ("" if high is None else f" < {high}")
        raise ValueError(f"{name}={value!r}; expected an int with {bounds}.")
    return int(value)


def prompt_dataset(
    source: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    shuffle: bool = True,
) -> grain.MapDataset:
    """An endless, per-epoch shuffled, host-sharded dataset of batches (module docstring).

    Args:
      source: a random-access source of records (`SyntheticTask`, `JsonlSource`, a list).
      batch_size: records per batch on this host, >= 1 (the global batch is
        ``batch_size * shard_count``).
      seed: shuffle seed in [0, 2**32), the same on every host.
      shard_index: this host's index i in [0, shard_count) (e.g. `jax.process_index()`).
      shard_count: the number of hosts n (e.g. `jax.process_count()`).
      shuffle: shuffle each epoch (False: source order, still sharded and repeated).

    Returns:
      A `grain.MapDataset` of `{field: [batch_size values]}` dicts, of (practically) infinite
      length: element k is this host's batch k.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0, 2**32)
    shard_count = _check_int("shard_count", shard_count, 1)
    shard_index = _check_int("shard_index", shard_index, 0, shard_count)
    if len(source) < 1:
        raise ValueError("the source has no records.")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)  # epoch e is shuffled with seed + e
    ds = ds.repeat(None, reseed_each_epoch=True)
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=collate)
    return ds[shard_index::shard_count]


def prompt_iterator(
    dataset: grain.MapDataset, *, num_threads: int = 1, prefetch: int = 4
) -> grain.DatasetIterator:
    """An iterator over `dataset` with `get_state()` / `set_state(state)` for checkpoints.

    Args:
      dataset: e.g. the result of `prompt_dataset`.
      num_threads: reader threads (0 reads in the calling thread).
      prefetch: batches read ahead per thread.

    Returns:
      A `grain.DatasetIterator`; its state is a small dict of Python ints, JSON-serialisable.
    """
    num_threads = _check_int("num_threads", num_threads, 0)
    prefetch = _check_int("prefetch", prefetch, 0)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))
