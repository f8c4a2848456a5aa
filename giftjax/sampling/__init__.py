"""The sampler: jitted generation with a KV cache, the one-token sampling step, shape buckets.

- `generate`, `generate_fn`, `SampleOutput` (generate.py): G samples per left-padded prompt,
  one prefill and a `lax.while_loop` of decode steps, compiled once per shape bucket;
- `sample_logits`, `check_sampling_args` (token_sampler.py): temperature, top-k and top-p
  draws of one token per row from logits [B, V];
- `bucket_size`, `left_pad`, `pad_prompts`, `drop_dummy_rows`, `check_left_padded`
  (buckets.py): host-side (NumPy) padding of prompts to a few shapes.
"""

from giftjax.sampling.buckets import (
    bucket_size,
    check_left_padded,
    drop_dummy_rows,
    left_pad,
    pad_prompts,
)
from giftjax.sampling.generate import SampleOutput, generate, generate_fn
from giftjax.sampling.token_sampler import check_sampling_args, sample_logits

__all__ = [
    "SampleOutput",
    "bucket_size",
    "check_left_padded",
    "check_sampling_args",
    "drop_dummy_rows",
    "generate",
    "generate_fn",
    "left_pad",
    "pad_prompts",
    "sample_logits",
]
