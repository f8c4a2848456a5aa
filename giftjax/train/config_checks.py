"""The config checks of whole sections: data, LoRA, batch divisibility, GAC.

[`validate`][giftjax.train.validate] runs them after the single-key checks. Every error is
a [`ConfigError`][giftjax.train.ConfigError] naming the key, the value received and the fix.
"""

from __future__ import annotations

import ml_collections

from giftjax.train.config import (
    FILE_SOURCES,
    LORA_TARGETS,
    OFFLINE_ALGOS,
    RL_ALGOS,
    ConfigError,
    check_at_least,
    check_choice,
    mesh_shape,
)


def check_data(c: ml_collections.ConfigDict) -> None:
    """The data section: the source's files and fields, the lengths, the synthetic task's noise."""
    if c.data.source in FILE_SOURCES and not c.data.path:
        kind = "parquet" if c.data.source == "parquet" else "jsonl"
        raise ConfigError(
            f"config.data.source={c.data.source!r} needs config.data.path (a local .{kind} file "
            "of the training split)."
        )
    if c.data.source == "tfds":
        _check_tfds(c.data)
    if c.algo.name == "dpo" and c.data.source != "synthetic" and not c.data.rejected_field:
        raise ConfigError(
            f"config.algo.name='dpo' on config.data.source={c.data.source!r} needs preference "
            "pairs: set config.data.rejected_field to the field holding each row's rejected "
            "response (and config.data.demonstration_field to the chosen one)."
        )
    check_at_least("data.max_prompt_len", c.data.max_prompt_len, 1)
    check_at_least("data.max_response_len", c.data.max_response_len, 1)
    w = c.data.wrong_demonstrations
    if not 0.0 <= w <= 1.0:
        raise ConfigError(f"config.data.wrong_demonstrations={w!r} must be a fraction in [0, 1].")
    if w and c.data.source != "synthetic":
        raise ConfigError(
            f"config.data.wrong_demonstrations={w!r} applies to data.source='synthetic' only "
            f"(data.source={c.data.source!r}); corrupt a JSONL file's demonstrations in the file."
        )


def _check_tfds(data: ml_collections.ConfigDict) -> None:
    """The keys of data.source="tfds" (the folder itself is checked when the source is built)."""
    # Imported here: giftjax.data (grain, tokenizers) costs seconds, and only tfds needs it.
    from giftjax.data import published

    check_choice("data.tfds_name", data.tfds_name, sorted(published.DATASETS))
    splits = published.DATASETS[data.tfds_name].splits
    check_choice("data.tfds_split", data.tfds_split, splits)
    check_choice("data.tfds_eval_split", data.tfds_eval_split, ("", *splits))
    if not data.path:
        raise ConfigError(
            "config.data.source='tfds' needs config.data.path: the folder written by "
            f"`python -m giftjax.data.prepare {data.tfds_name} --out DIR` (DIR)."
        )
    if data.rejected_field:
        raise ConfigError(
            f"config.data.rejected_field={data.rejected_field!r} is not available with "
            "config.data.source='tfds'; use source='jsonl' or 'parquet' for preference pairs."
        )
    if data.demonstration_field:
        raise ConfigError(
            f"config.data.demonstration_field={data.demonstration_field!r} is not available "
            "with config.data.source='tfds' (its records hold a prompt and an answer); use "
            "source='jsonl' or 'parquet' for demonstrations."
        )


def check_lora(lora: ml_collections.ConfigDict) -> None:
    """``model.lora``: rank 0 (off) or a rank, alpha and targets that work."""
    check_at_least("model.lora.rank", lora.rank, 0, " (0 turns LoRA off)")
    if lora.rank == 0:
        if lora.train_norms:
            raise ConfigError(
                "config.model.lora.train_norms=True needs LoRA on: set config.model.lora.rank "
                "> 0 (with rank 0 every weight, the norms included, trains already)."
            )
        return
    if not lora.alpha > 0:
        raise ConfigError(f"config.model.lora.alpha={lora.alpha!r} must be > 0.")
    if lora.dropout != 0:
        raise ConfigError(
            f"config.model.lora.dropout={lora.dropout!r}: only 0 is supported (LoRA dropout "
            "would make the trainer's log-probs random and unequal to the sampler's)."
        )
    names = [t.strip() for t in str(lora.targets).split(",") if t.strip()]
    unknown = [t for t in names if t not in LORA_TARGETS]
    if unknown or not names:
        raise ConfigError(
            f"config.model.lora.targets={lora.targets!r}: unknown or empty {unknown}; "
            f"choose comma-separated names among {LORA_TARGETS}."
        )


def check_batches(c: ml_collections.ConfigDict, num_devices: int) -> None:
    """Each update's rows split into micro-batches of whole groups that divide over the
    mesh's data axes (rollout rows for RL, demonstration / preference rows otherwise)."""
    r = c.rollout
    sizes = mesh_shape(c, num_devices)
    data_ways = sizes["data"] * sizes["fsdp"]
    k = c.train.micro_batches
    if c.algo.name in RL_ALGOS:
        p, g, u = r.prompts_per_step, r.group_size, c.train.updates_per_rollout
        if p % u:
            raise ConfigError(
                f"config.train.updates_per_rollout={u} must divide "
                f"config.rollout.prompts_per_step={p}: each update takes whole groups. "
                f"Valid values: {_divisors(p)}."
            )
        groups = p // u
        if groups % k:
            raise ConfigError(
                f"config.train.micro_batches={k} must divide the {groups} groups of each update "
                f"(prompts_per_step / updates_per_rollout): micro-batches hold whole groups. "
                f"Valid values: {_divisors(groups)}."
            )
        rows = p * g // (u * k)
        if rows % data_ways:
            raise ConfigError(
                f"a micro-batch of {rows} rows (P*G / (updates_per_rollout * micro_batches) = "
                f"{p}*{g} / ({u}*{k})) is not divisible by the mesh's data axes "
                f"(data*fsdp = {data_ways}); change config.rollout.prompts_per_step, "
                f"config.rollout.group_size, config.train.micro_batches or config.mesh."
            )
    if c.algo.name in OFFLINE_ALGOS or c.algo.name == "hybrid" or c.train.warmup_sft_steps:
        # Demonstration / preference batches: P rows, placed over the data axes.
        p = r.prompts_per_step
        if p % k or (p // k) % data_ways:
            raise ConfigError(
                f"config.rollout.prompts_per_step={p} (the rows of a demonstration batch) must "
                f"split into config.train.micro_batches={k} micro-batches each divisible by the "
                f"mesh's data axes (data*fsdp = {data_ways})."
            )


def check_gac(c: ml_collections.ConfigDict) -> None:
    """The hybrid run's GAC settings."""
    check_choice("algo.gac.mode", c.algo.gac.mode, ("adaptive", "fixed", "prior"))
    check_choice("algo.gac.smoothing", c.algo.gac.smoothing, ("separate", "anchored"))
    check_choice("algo.gac.estimator", c.algo.gac.estimator, ("gradient", "proxy"))
    if c.algo.gac.estimator == "gradient" and c.train.micro_batches < 2:
        raise ConfigError(
            "config.algo.gac.estimator='gradient' measures noise from the spread of the "
            "micro-batch gradients: set config.train.micro_batches >= 2 (it is 1)."
        )
    if c.algo.gac.mode == "adaptive" and not c.algo.gac.collect_stats:
        raise ConfigError(
            "config.algo.gac.collect_stats=False leaves the adaptive controller without "
            "statistics (mu would never leave its prior path); use it only with "
            "config.algo.gac.mode='fixed' or 'prior'."
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
