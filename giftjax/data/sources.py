"""Build a data source from the `data` section of a config.

Keys read (others are ignored here; the trainer validates the whole config):

- `data.source`: one of `SOURCES` ("synthetic", "jsonl", "parquet", "gsm8k", "math500",
  "tfds").
- synthetic: `data.kind` (a name in `giftjax.data.KINDS`), `data.train_size`,
  `data.eval_size`, `data.wrong_demonstrations` (the share of deliberately wrong
  demonstrations in the train split, default 0); the eval split is the task's held-out split.
- jsonl, parquet: `data.path` (train), `data.eval_path` (eval), `data.prompt_field` (default
  "prompt"), `data.answer_field` (default "answer"); `data.demonstration_field` and
  `data.rejected_field` (sft/hybrid demonstrations, DPO's rejected responses), when set, are
  copied into each record under their own names.
- gsm8k, math500: local copies of the public data sets in their published JSONL layout,
  `data.path` (train) and `data.eval_path` (eval); the fields are fixed (`NAMED_FIELDS`):
  GSM8K `question` -> prompt, `answer` (the full solution ending in `#### N`, which the
  `gsm8k` reward reads) -> answer; MATH-500 `problem` -> prompt, `answer` -> answer.
- tfds: GSM8K or MATH-500 as written by `python -m giftjax.data.prepare NAME --out DIR`:
  `data.path` (DIR), `data.tfds_name` ("gsm8k" or "math500"), `data.tfds_split` (train) and
  `data.tfds_eval_split` (eval); the same records as the JSONL sources of that name.

`data.template` is not read here: the prompt text is rendered later (`render_prompt`).
"""

from __future__ import annotations

from typing import Any

from giftjax.data.jsonl import JsonlSource
from giftjax.data.parquet import ParquetSource
from giftjax.data.published import DATASETS
from giftjax.data.synthetic import SyntheticTask
from giftjax.data.tfds_source import TfdsSource

__all__ = ["NAMED_FIELDS", "SOURCES", "get_source"]

SOURCES = ("synthetic", "jsonl", "parquet", "gsm8k", "math500", "tfds")
# The JSONL sources with a known layout: name -> (prompt field, answer field).
NAMED_FIELDS = {name: (d.prompt_field, d.answer_field) for name, d in DATASETS.items()}
_SPLITS = ("train", "eval")
# Config keys naming response columns a file source copies when they are set.
RESPONSE_FIELDS = ("demonstration_field", "rejected_field")


def _get(config_data: Any, key: str, default: Any = ..., *, needed_by: str = "") -> Any:
    """config_data[key] for a dict or an ml_collections ConfigDict (None counts as unset); a
    missing required key is an error naming `data.<key>`."""
    getter = getattr(config_data, "get", None)
    value = getter(key, None) if callable(getter) else getattr(config_data, key, None)
    if value is None:
        if default is ...:
            raise ValueError(f"data.{key} is not set; it is required{needed_by}.")
        return default
    return value


def get_source(config_data: Any, *, split: str = "train", seed: int = 0):
    """The random-access source of one split described by a config's `data` section.

    Args:
      config_data: the `data` section (a ConfigDict or a dict), keys in the module docstring.
      split: "train" or "eval".
      seed: the synthetic task's seed (usually the config's top-level `seed`).

    Returns:
      A `SyntheticTask`, `JsonlSource`, `ParquetSource` or `TfdsSource` yielding
      `{"prompt", "answer", ...}` records.

    Raises:
      ValueError: an unknown source or split, or a key the source needs is unset.
      FileNotFoundError: a file (jsonl, parquet, gsm8k, math500) does not exist, or the
        prepared TFDS data set (tfds) is missing (the message gives the command to run).
    """
    if split not in _SPLITS:
        raise ValueError(f"split={split!r}; expected one of {_SPLITS}.")
    source = _get(config_data, "source", needed_by=f" (one of {SOURCES})")
    needed_by = f" by data.source={source!r} (split {split!r})"
    if source == "synthetic":
        size_key = "train_size" if split == "train" else "eval_size"
        return SyntheticTask(
            kind=_get(config_data, "kind", needed_by=needed_by),
            split="train" if split == "train" else "heldout",
            size=_get(config_data, size_key, needed_by=needed_by),
            seed=seed,
            wrong_demonstrations=_get(config_data, "wrong_demonstrations", 0.0)
            if split == "train"
            else 0.0,
        )
    if source == "tfds":
        split_key = "tfds_split" if split == "train" else "tfds_eval_split"
        names = f"{needed_by}, one of {sorted(DATASETS)}"
        return TfdsSource(
            _get(config_data, "path", needed_by=needed_by),
            name=_get(config_data, "tfds_name", needed_by=names),
            split=_get(config_data, split_key, needed_by=needed_by),
        )
    if source in ("jsonl", "parquet") or source in NAMED_FIELDS:
        path = _get(config_data, "path" if split == "train" else "eval_path", needed_by=needed_by)
        extra = tuple(f for f in (_get(config_data, k, "") for k in RESPONSE_FIELDS) if f)
        if source in NAMED_FIELDS:
            prompt_field, answer_field = NAMED_FIELDS[source]
        else:
            prompt_field = _get(config_data, "prompt_field", "prompt")
            answer_field = _get(config_data, "answer_field", "answer")
        reader = ParquetSource if source == "parquet" else JsonlSource
        return reader(
            path,
            prompt_field=prompt_field,
            answer_field=answer_field,
            extra_fields=tuple(dict.fromkeys(extra)),
        )
    raise ValueError(f"data.source={source!r}; expected one of {SOURCES}.")
