"""The synthetic task's reward, registered as ``synthetic``.

The scorer lives with the task ([`score`][giftjax.data.score], partial credit in
[0, 1], 1.0 exactly for the right answer); this module only registers it under the reward
protocol. The task module is imported when the reward is first called, so importing
[`giftjax.rewards`][giftjax.rewards] (as the process executor's workers do) stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from giftjax.rewards.registry import register


@register("synthetic")
def synthetic(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    answer: Sequence[str],
    **unused_columns: Sequence[Any],
) -> list[float]:
    """Partial credit of each completion against its ``answer`` (the synthetic task's score:
    ``(format + 9 matches / max(len(c), len(answer))) / 10``)."""
    from giftjax.data.synthetic import synthetic_reward

    return synthetic_reward(prompts, completions, answer=answer)
