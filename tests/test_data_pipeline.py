"""grain pipelines: resumable iterators, per-epoch shuffles, disjoint host shards; get_source."""

import json
import os

import ml_collections
import pytest

from giftjax.data import (
    JsonlSource,
    SyntheticTask,
    collate,
    get_source,
    prompt_dataset,
    prompt_iterator,
)


def numbered(n):
    return [{"prompt": f"p{i}", "answer": str(i)} for i in range(n)]


def answers(batches):
    return [int(a) for b in batches for a in b["answer"]]


def take(it, k):
    return [next(it) for _ in range(k)]


def test_batches_are_dicts_of_string_lists():
    ds = prompt_dataset(SyntheticTask(size=20, seed=1), batch_size=4, seed=0)
    batch = ds[0]
    assert set(batch) == {"prompt", "answer", "demonstration", "rejected"}
    assert all(len(v) == 4 and all(isinstance(s, str) for s in v) for v in batch.values())


@pytest.mark.parametrize("num_threads", [0, 2])
def test_iterator_state_resumes_exactly(num_threads):
    ds = prompt_dataset(numbered(23), batch_size=4, seed=5)
    it = prompt_iterator(ds, num_threads=num_threads)
    take(it, 7)  # crosses the first epoch boundary (5 batches per epoch)
    state = it.get_state()
    state = json.loads(json.dumps(state))  # it survives a checkpoint's serialisation
    expected = take(it, 6)
    resumed = prompt_iterator(prompt_dataset(numbered(23), batch_size=4, seed=5))
    resumed.set_state(state)
    assert take(resumed, 6) == expected
    assert take(prompt_iterator(ds), 13)[7:] == expected  # same as an uninterrupted run


def test_each_epoch_is_a_new_permutation():
    n, b = 24, 4
    got = answers(
        take(prompt_iterator(prompt_dataset(numbered(n), batch_size=b, seed=3)), 3 * n // b)
    )
    epochs = [got[e * n : (e + 1) * n] for e in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(n))
    other = answers(take(prompt_iterator(prompt_dataset(numbered(n), batch_size=b, seed=4)), 6))
    assert other != epochs[0]
    same = answers(take(prompt_iterator(prompt_dataset(numbered(n), batch_size=b, seed=3)), 6))
    assert same == epochs[0]


def test_no_shuffle_keeps_source_order():
    ds = prompt_dataset(numbered(6), batch_size=4, seed=0, shuffle=False)
    assert answers(take(prompt_iterator(ds), 3)) == [0, 1, 2, 3, 4, 5] * 2


@pytest.mark.parametrize("n", [30, 32])
def test_host_batches_together_are_the_single_host_batch(n):
    """Host i's batch k is block i of the global batch k one host reading batch_size * hosts
    records would see: a multi-host run trains on the same global batches."""
    hosts, b = 3, 5
    single = prompt_dataset(numbered(n), batch_size=b * hosts, seed=9)
    shards = [
        prompt_dataset(numbered(n), batch_size=b, seed=9, shard_index=i, shard_count=hosts)
        for i in range(hosts)
    ]
    for k in range(2 * n // (b * hosts) + 1):  # past two epochs (n = 32: batches span epochs)
        joined = [x for ds in shards for x in answers([ds[k]])]
        assert joined == answers([single[k]])


def test_argument_errors():
    with pytest.raises(ValueError, match="shard_index=3"):
        prompt_dataset(numbered(9), batch_size=1, seed=0, shard_index=3, shard_count=3)
    with pytest.raises(ValueError, match="no records"):
        prompt_dataset([], batch_size=1, seed=0)
    with pytest.raises(ValueError, match="seed=-1"):
        prompt_dataset(numbered(3), batch_size=1, seed=-1)
    with pytest.raises(ValueError, match="batch_size=0"):
        prompt_dataset(numbered(3), batch_size=0, seed=0)
    with pytest.raises(ValueError, match="record 1 of the batch has keys"):
        collate([{"prompt": "a"}, {"answer": "b"}])


def test_get_source_synthetic_and_jsonl(tmp_path):
    data = ml_collections.ConfigDict(
        {"source": "synthetic", "kind": "add", "train_size": 50, "eval_size": 10, "path": ""}
    )
    train, heldout = get_source(data, seed=2), get_source(data, split="eval", seed=2)
    assert (len(train), train.split, train.kind) == (50, "train", "add")
    assert (len(heldout), heldout.split) == (10, "heldout")
    assert train[0] == SyntheticTask(kind="add", size=50, seed=2)[0]

    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "final": "1"}\n', encoding="utf-8")
    cfg = {"source": "jsonl", "path": os.fspath(path), "prompt_field": "question"}
    cfg["answer_field"] = "final"
    src = get_source(cfg)
    assert isinstance(src, JsonlSource) and src[0] == {"prompt": "q", "answer": "1"}
    with pytest.raises(ValueError, match=r"data\.eval_path is not set"):
        get_source(cfg, split="eval")
    with pytest.raises(ValueError, match=r"data\.source='tfds'"):
        get_source({"source": "tfds"})
    with pytest.raises(ValueError, match=r"data\.kind is not set"):
        get_source({"source": "synthetic", "train_size": 3})
