"""Evaluation on fixed prompt sets: greedy pass@1 and sampled mean@k / pass@k.

For each evaluation split (the synthetic task's ``train`` range and its ``heldout`` range, or
a JSONL eval file), the first ``data.eval_size`` rows are scored:

- ``eval/<split>/pass@1``: the fraction of prompts whose greedy response earns the full reward
  (total reward >= 1; with 0/1 rewards this is accuracy);
- ``eval/<split>/reward_mean``: the mean reward of the greedy responses;
- ``eval/<split>/mean@k``: the mean reward of k sampled responses per prompt (the rollout's
  temperature, top-p and top-k), and ``eval/<split>/pass@k`` the fraction of prompts with at
  least one of k samples earning the full reward (k = ``eval.num_samples``).

Everything is a deterministic function of the parameters and the step's key, so evaluating
the same checkpoint twice gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from giftjax import data as data_lib
from giftjax import distributed
from giftjax.rewards import RewardRunner
from giftjax.train import rollout as rollout_lib

FULL_REWARD = 1.0 - 1e-6  # a response "passes" when its total reward reaches 1


def sources(config_data: ml_collections.ConfigDict, *, seed: int) -> tuple[Any, dict[str, Any]]:
    """The training source and the evaluation sources (name -> random-access rows).

    The synthetic task is evaluated on its ``train`` range and on its ``heldout`` range (drawn
    from a disjoint range, so the gap measures generalisation); a file source on
    ``data.eval_path``, or a TFDS source on ``data.tfds_eval_split``, when it is set
    (``heldout``).
    """
    train = data_lib.get_source(config_data, split="train", seed=seed)
    evals: dict[str, Any] = {}
    if config_data.source == "synthetic":
        evals["train"] = train
        evals["heldout"] = data_lib.get_source(config_data, split="eval", seed=seed)
    elif config_data.tfds_eval_split if config_data.source == "tfds" else config_data.eval_path:
        evals["heldout"] = data_lib.get_source(config_data, split="eval", seed=seed)
    return train, evals


def _score(
    model,
    rows: Sequence[Mapping[str, Any]],
    *,
    tokenizer: Any,
    runner: RewardRunner,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    key: jax.Array,
    num_samples: int,
    temperature: float,
    step: int,
) -> np.ndarray:
    """Rewards [P, num_samples] of responses to ``rows`` (every process gives all P rows;
    in a multi-process run each samples and scores its share and the results are gathered)."""
    share, total = rollout_lib.host_share(rows, mesh)
    texts = rollout_lib.render_prompts(tokenizer, share, config)
    *_, completions = rollout_lib.sample_responses(
        model,
        texts,
        tokenizer=tokenizer,
        config=config,
        mesh=mesh,
        key=key,
        num_samples=num_samples,
        temperature=temperature,
    )
    columns = rollout_lib.row_columns(share)
    result = rollout_lib.score_responses(
        runner, texts, completions, columns, num_samples=num_samples, step=step
    )
    rewards = distributed.allgather(result.total.reshape(len(share), num_samples))  # [total, k]
    return rewards[: min(len(rows), total)]


def evaluate(
    graphdef: nnx.GraphDef,
    params: Any,
    sources: Mapping[str, Any],
    *,
    tokenizer: Any,
    runner: RewardRunner,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    key: jax.Array,
    step: int,
) -> dict[str, float]:
    """The ``eval/...`` metrics of ``params`` on each source in ``sources`` (name -> rows)."""
    model = nnx.merge(graphdef, params)
    k = config.eval.num_samples
    out: dict[str, float] = {}
    for i, (name, source) in enumerate(sorted(sources.items())):
        n = min(config.data.eval_size, len(source))
        if n == 0:
            continue
        rows = [source[j] for j in range(n)]
        common = dict(tokenizer=tokenizer, runner=runner, config=config, mesh=mesh, step=step)
        greedy = _score(model, rows, key=key, num_samples=1, temperature=0.0, **common)[:, 0]  # [P]
        out[f"eval/{name}/pass@1"] = float(np.mean(greedy >= FULL_REWARD))
        out[f"eval/{name}/reward_mean"] = float(np.mean(greedy))
        temp = config.rollout.temperature
        if k > 1 and temp > 0:
            sampled = _score(
                model,
                rows,
                key=jax.random.fold_in(key, i),
                num_samples=k,
                temperature=temp,
                **common,
            )  # [P, k]
            out[f"eval/{name}/mean@{k}"] = float(np.mean(sampled))
            out[f"eval/{name}/pass@{k}"] = float(np.mean(np.any(sampled >= FULL_REWARD, axis=1)))
    return out
