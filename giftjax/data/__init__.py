"""giftjax.data: sources, prompt templates, host-side tokenisation and grain pipelines.

- sources: `SyntheticTask` (verifiable tasks generated on the fly, `KINDS`), `JsonlSource`,
  `ParquetSource`, `TfdsSource` (GSM8K / MATH-500 prepared by `python -m giftjax.data.prepare`),
  `get_source(config.data, split=...)`;
- the synthetic tasks' tokenizer `build_tokenizer()` (vocabulary `SYNTHETIC_VOCAB_SIZE`) and
  scorer `score` / reward `synthetic_reward`;
- `render_prompt` (templates "plain", "chat");
- `encode_prompts`, `encode_demonstrations`, `decode_responses` (NumPy, on the host);
- `prompt_dataset`, `prompt_iterator` (grain, checkpointable).
"""

from giftjax.data.jsonl import JsonlSource
from giftjax.data.parquet import ParquetSource
from giftjax.data.pipeline import collate, prompt_dataset, prompt_iterator
from giftjax.data.sources import SOURCES, get_source
from giftjax.data.synthetic import (
    KINDS,
    AddKind,
    ReverseKind,
    SyntheticTask,
    score,
    synthetic_reward,
)
from giftjax.data.synthetic_tokenizer import SYNTHETIC_VOCAB_SIZE, build_tokenizer
from giftjax.data.templates import TEMPLATES, render_prompt
from giftjax.data.tfds_source import TfdsSource
from giftjax.data.tokenize import decode_responses, encode_demonstrations, encode_prompts

__all__ = [
    "KINDS",
    "SOURCES",
    "SYNTHETIC_VOCAB_SIZE",
    "TEMPLATES",
    "AddKind",
    "JsonlSource",
    "ParquetSource",
    "ReverseKind",
    "SyntheticTask",
    "TfdsSource",
    "build_tokenizer",
    "collate",
    "decode_responses",
    "encode_demonstrations",
    "encode_prompts",
    "get_source",
    "prompt_dataset",
    "prompt_iterator",
    "render_prompt",
    "score",
    "synthetic_reward",
]
