"""giftjax.data: sources, tokenisation, templates and grain pipelines."""

from giftjax.data.synthetic import KINDS, SyntheticTask, score, synthetic_reward
from giftjax.data.tokenize import decode_responses, encode_demonstrations, encode_prompts
from giftjax.data.tokenizer import SYNTHETIC_VOCAB_SIZE, build_tokenizer

__all__ = [
    "KINDS",
    "SYNTHETIC_VOCAB_SIZE",
    "SyntheticTask",
    "build_tokenizer",
    "decode_responses",
    "encode_demonstrations",
    "encode_prompts",
    "score",
    "synthetic_reward",
]
