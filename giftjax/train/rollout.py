"""One rollout batch: prompts -> generate -> decode -> rewards, and demonstration batches.

Shape letters: P prompts, G samples per prompt, B = P x G rows (the samples of prompt g are
the contiguous rows g*G .. g*G+G-1), Tp prompt tokens (left-padded to ``data.max_prompt_len``,
so every step has the same shapes and the sampler compiles once), M = ``rollout.max_new_tokens``
response tokens, T = Tp + M.

Host work (tokenising, decoding, rewards) is NumPy and Python; device work (sampling) is one
jitted ``giftjax.sampling.generate`` on the trainer's mesh and weights.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from giftjax import data as data_lib
from giftjax import distributed, sampling
from giftjax import sharding as sharding_lib
from giftjax.rewards import RewardRunner


@dataclasses.dataclass
class Rollout:
    """One rollout batch (device arrays sharded by rows, host lists for logging).

    The device arrays are global (all B rows, over every process); the host fields (texts,
    rewards, per_fn, reward_errors) are this process's rows only (all of them in a
    single-process run): ``B / process_count`` rows, P / process_count prompts.

    Attributes:
      tokens: [B, T] int32, the left-padded prompt then the response.
      attn_mask: [B, T] int32, 1 for real tokens (prompt padding and post-EOS slots are 0).
      resp_mask: [B, M] float32, 1 for response tokens (the EOS included).
      sampler_logps: [B, M] float32, the sampler's log-probs of its tokens.
      rewards: [B] float32, the weighted reward of each response.
      host_rewards: this process's rows of ``rewards`` as a NumPy array.
      host_lengths: [B / n] int, the response lengths of this process's rows.
      prompts: P prompt texts; completions: B decoded responses; columns: the data rows'
        other fields per prompt; per_fn: reward name -> [B]; reward_errors: failed calls.
      seconds: {"rollout": generate + decode, "reward": reward calls}.
    """

    tokens: jax.Array
    attn_mask: jax.Array
    resp_mask: jax.Array
    sampler_logps: jax.Array
    rewards: jax.Array
    host_rewards: np.ndarray
    host_lengths: np.ndarray
    prompts: list[str]
    completions: list[str]
    columns: dict[str, list[Any]]
    per_fn: dict[str, np.ndarray]
    reward_errors: int
    seconds: dict[str, float]

    def batch(self) -> dict[str, jax.Array]:
        """The rollout rows as an update batch: tokens, attn_mask, resp_mask, rewards,
        sampler_logps (``plan.ROLLOUT_KEYS``; the log-prob passes and advantages add the rest)."""
        return {
            "tokens": self.tokens,
            "attn_mask": self.attn_mask,
            "resp_mask": self.resp_mask,
            "rewards": self.rewards,
            "sampler_logps": self.sampler_logps,
        }


def sampler_settings(
    config: ml_collections.ConfigDict, temperature: float, *, eos_id: int | None
) -> dict[str, Any]:
    """The sampling keyword arguments of ``sampling.generate`` for the run's rollouts at
    ``temperature``: top-p / top-k (greedy, temperature 0, uses neither) and the EOS id when
    ``rollout.stop_at_eos`` (else None: every row runs to ``max_new_tokens``)."""
    r = config.rollout
    return {
        "temperature": temperature,
        "top_p": r.top_p if temperature else 1.0,
        "top_k": r.top_k if temperature else 0,
        "eos_id": eos_id if r.stop_at_eos else None,
    }


def records(batch: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """A collated data batch ``{field: [values]}`` as one dict per row."""
    keys = list(batch)
    return [dict(zip(keys, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def render_prompts(
    tokenizer: Any, rows: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> list[str]:
    """The prompt text of each data row, ``prompt + " " + data.instruction`` (the prompt alone
    when the instruction is empty), through ``data.template``."""
    suffix = f" {config.data.instruction}" if config.data.instruction else ""
    return [
        data_lib.render_prompt(
            tokenizer,
            row["prompt"],
            template=config.data.template,
            system=config.data.system or None,
            suffix=suffix,
        )
        for row in rows
    ]


def row_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The rows' fields other than the prompt, as lists (the reward functions' ``columns``)."""
    keys = [k for k in rows[0] if k != "prompt"] if rows else []
    return {k: [row.get(k) for row in rows] for k in keys}


def sample_responses(
    model: nnx.Module,
    texts: Sequence[str],
    *,
    tokenizer: Any,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    key: jax.Array,
    num_samples: int,
    temperature: float,
) -> tuple[np.ndarray, np.ndarray, sampling.SampleOutput, list[str]]:
    """Samples ``num_samples`` responses to each prompt text, on the host's side decoded.

    The prompts are tokenised and left-padded to ``data.max_prompt_len``; when the P x G rows
    do not divide over the mesh's data axes, dummy prompts are appended and their samples
    dropped. In a multi-process run ``texts`` are this process's block of the global prompts
    (P in all, a multiple of the data axes' size) and the results are this process's rows.
    The rollout settings give the length and top-p / top-k (greedy, temperature 0, uses
    neither).

    Returns:
      ``ids``, ``mask`` [P, Tp] int32; the sampler's output as host arrays [P*G, M] (tokens,
      mask int32; logps float32); the P*G decoded responses.
    """
    r = config.rollout
    ids, mask = data_lib.encode_prompts(tokenizer, texts, max_prompt_len=config.data.max_prompt_len)
    n = len(texts)
    multi = distributed.is_multiprocess()
    if multi:
        # This process's prompts are its block of the global batch (see giftjax.distributed):
        # the sampler runs on the global array, and each host takes its own rows back.
        placed = sharding_lib.shard_batch(
            {"ids": ids, "mask": mask}, mesh, sharding_lib.get_rules(config.mesh.rules)
        )
        padded_ids, padded_mask = placed["ids"], placed["mask"]
    else:
        padded_ids, padded_mask = jnp.asarray(ids), jnp.asarray(mask)
        rows = sharding_lib.sampled_prompts(n, num_samples, sharding_lib.data_ways(mesh))
        if rows != n:
            padded_ids, padded_mask, _ = sampling.pad_prompts(
                ids,
                mask,
                pad_id=tokenizer.pad_token_id,
                length=config.data.max_prompt_len,
                batch=rows,
            )
            padded_ids, padded_mask = jnp.asarray(padded_ids), jnp.asarray(padded_mask)
    out = sampling.generate(
        model,
        padded_ids,
        padded_mask,
        max_new_tokens=r.max_new_tokens,
        key=key,
        num_samples=num_samples,
        pad_id=tokenizer.pad_token_id,
        **sampler_settings(config, temperature, eos_id=tokenizer.eos_token_id),
        mesh=mesh,
        rules=config.mesh.rules,
    )
    if not multi:
        out = sampling.drop_dummy_rows(out, n, num_samples=num_samples)
    out = sampling.SampleOutput(
        distributed.local_rows(out.tokens).astype(np.int32),
        distributed.local_rows(out.mask).astype(np.int32),
        distributed.local_rows(out.logps),
    )
    return ids, mask, out, data_lib.decode_responses(tokenizer, out.tokens, out.mask)


def host_share(rows: Sequence[Any], mesh: Mesh) -> tuple[list[Any], int]:
    """This process's block of ``rows`` that every process holds in full (evaluation prompts).

    Multi-process: the rows are padded (repeating the last) to a multiple of the data axes'
    size data x fsdp, then split into ``process_count`` contiguous blocks; single process: all
    rows. Returns ``(block, padded_total)``; `giftjax.distributed.allgather` of per-row
    results gives ``padded_total`` rows, the first ``len(rows)`` of them the real ones.
    """
    rows = list(rows)
    if not distributed.is_multiprocess():
        return rows, len(rows)
    ways = sharding_lib.data_ways(mesh)
    total = sharding_lib.round_up(len(rows), ways)
    padded = rows + [rows[-1]] * (total - len(rows))
    per = total // jax.process_count()
    i = jax.process_index()
    return padded[i * per : (i + 1) * per], total


def score_responses(
    runner: RewardRunner,
    texts: Sequence[str],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]],
    *,
    num_samples: int,
    step: int,
):
    """The reward runner on P prompts x ``num_samples`` responses (prompt-major): each
    prompt's text and data columns repeated for its samples. Returns the RewardResult."""
    rep = lambda xs: [x for x in xs for _ in range(num_samples)]
    return runner(rep(texts), completions, {k: rep(v) for k, v in columns.items()}, step=step)


def generate_rollout(
    graphdef: nnx.GraphDef,
    params: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    tokenizer: Any,
    runner: RewardRunner,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    key: jax.Array,
    step: int,
) -> Rollout:
    """Samples G responses for each of the P data rows, decodes and scores them."""
    r = config.rollout
    g = r.group_size
    start = time.perf_counter()
    texts = render_prompts(tokenizer, rows, config)
    ids, mask, out, completions = sample_responses(
        nnx.merge(graphdef, params),
        texts,
        tokenizer=tokenizer,
        config=config,
        mesh=mesh,
        key=key,
        num_samples=g,
        temperature=r.temperature,
    )
    resp_tokens, resp_mask = out.tokens, out.mask  # [B, M]
    tokens = np.concatenate([np.repeat(ids, g, axis=0), resp_tokens], axis=1)  # [B, T]
    attn = np.concatenate([np.repeat(mask, g, axis=0), resp_mask], axis=1)
    t_rollout = time.perf_counter() - start

    start = time.perf_counter()
    columns = row_columns(rows)
    result = score_responses(runner, texts, completions, columns, num_samples=g, step=step)
    t_reward = time.perf_counter() - start

    rules = sharding_lib.get_rules(config.mesh.rules)
    placed = sharding_lib.shard_batch(
        {
            "tokens": tokens,
            "attn_mask": attn,
            "resp_mask": resp_mask.astype(np.float32),
            "sampler_logps": np.asarray(out.logps, np.float32),
            "rewards": result.total.astype(np.float32),
        },
        mesh,
        rules,
    )
    return Rollout(
        tokens=placed["tokens"],
        attn_mask=placed["attn_mask"],
        resp_mask=placed["resp_mask"],
        sampler_logps=placed["sampler_logps"],
        rewards=placed["rewards"],
        host_rewards=result.total.astype(np.float32),
        host_lengths=resp_mask.sum(axis=1),
        prompts=texts,
        completions=completions,
        columns=columns,
        per_fn=result.per_fn,
        reward_errors=result.errors,
        seconds={"rollout": t_rollout, "reward": t_reward},
    )


def demonstration_batch(
    rows: Sequence[Mapping[str, Any]],
    *,
    tokenizer: Any,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> dict[str, jax.Array]:
    """Teacher-forcing rows ``tokens``, ``attn_mask`` [P, Tp+Mr] and ``resp_mask`` [P, Mr]
    (Mr = ``data.max_response_len``) from each row's prompt and demonstration."""
    texts = render_prompts(tokenizer, rows, config)
    field = config.data.demonstration_field or "demonstration"
    responses = _responses(rows, field, "data.demonstration_field", "demonstrations")
    return _pair_rows(texts, responses, tokenizer, config, mesh)


def _responses(rows: Sequence[Mapping[str, Any]], field: str, key: str, what: str) -> list[str]:
    """Each row's non-empty ``field`` text; a missing one names the config ``key`` to set."""
    out = []
    for i, row in enumerate(rows):
        resp = row.get(field)
        if not isinstance(resp, str) or not resp:
            raise ValueError(
                f"data row {i} has no {field!r} text; the run needs {what} (for JSONL or "
                f"Parquet data set config.{key} to the field holding them)."
            )
        out.append(resp)
    return out


def _pair_rows(texts, responses, tokenizer, config, mesh) -> dict[str, jax.Array]:
    enc = data_lib.encode_demonstrations(
        tokenizer,
        texts,
        responses,
        max_prompt_len=config.data.max_prompt_len,
        max_response_len=config.data.max_response_len,
    )
    tokens = np.concatenate([enc["prompt_ids"], enc["response_ids"]], axis=1).astype(np.int32)
    attn = np.concatenate([enc["prompt_mask"], enc["response_mask"]], axis=1).astype(np.int32)
    return sharding_lib.shard_batch(
        {
            "tokens": tokens,
            "attn_mask": attn,
            "resp_mask": enc["response_mask"].astype(np.float32),
        },
        mesh,
        sharding_lib.get_rules(config.mesh.rules),
    )


def preference_batch(
    rows: Sequence[Mapping[str, Any]],
    *,
    tokenizer: Any,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> dict[str, jax.Array]:
    """DPO pairs: the row's demonstration (``data.demonstration_field``) as chosen, its
    rejected response (``data.rejected_field``; the synthetic task's ``rejected``) as
    rejected; keys ``chosen_*`` and ``rejected_*``."""
    chosen = demonstration_batch(rows, tokenizer=tokenizer, config=config, mesh=mesh)
    texts = render_prompts(tokenizer, rows, config)
    field = config.data.rejected_field or "rejected"
    rejected_text = _responses(rows, field, "data.rejected_field", "DPO's rejected responses")
    rejected = _pair_rows(texts, rejected_text, tokenizer, config, mesh)
    return {
        "chosen_tokens": chosen["tokens"],
        "chosen_attn": chosen["attn_mask"],
        "chosen_mask": chosen["resp_mask"],
        "rejected_tokens": rejected["tokens"],
        "rejected_attn": rejected["attn_mask"],
        "rejected_mask": rejected["resp_mask"],
    }
