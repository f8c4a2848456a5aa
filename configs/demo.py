"""Loss demo: every giftjax loss on one generated batch, on the CPU in seconds.

Launch:
  python -m giftjax.demo --config=configs/demo.py --workdir=/tmp/giftjax-demo
  python -m giftjax.demo --config=configs/demo.py:big --workdir=/tmp/giftjax-demo

Training recipes (GIFT, GRPO, hybrid SFT+RL with GAC) run through ``python -m giftjax.main``.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The demo config; ``arg="big"`` takes a larger batch."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    # --- The generated batch: P prompts x G samples, T response tokens, V vocabulary.
    config.batch = ml_collections.ConfigDict()
    config.batch.prompts = 4
    config.batch.group_size = 8
    config.batch.tokens = 32
    config.batch.vocab = 128

    # --- Loss hyper-parameters (the published defaults).
    config.gift_beta = 1.0
    config.dpo_beta = 0.1
    config.una_beta = 0.1

    if arg == "big":
        config.batch.prompts = 64
        config.batch.tokens = 512
    elif arg not in (None, ""):
        raise ValueError(f"configs/demo.py: unknown variant {arg!r}; use 'big' or nothing.")
    return config
