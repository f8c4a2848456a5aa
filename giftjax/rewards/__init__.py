"""Reward functions: the protocol, a name -> function registry and a sandboxed runner.

Protocol: a reward function is

    fn(prompts: list[str], completions: list[str], **columns) -> Sequence[float]

returning one value per completion; ``columns`` are the data set's other fields for the same
rows (e.g. ``answer=[...]``), lists of the same length. Rewards run on the host, in Python.
Accept ``**unused_columns`` so that a data set with extra fields does not break the function.

Writing and registering a custom reward (in an importable module, so that the process executor's
workers can import it too):

```
# my_project/rewards.py
from giftjax import rewards

@rewards.register("contains_answer")
def contains_answer(prompts, completions, *, answer, **unused_columns):
    return [1.0 if str(a) in c else 0.0 for c, a in zip(completions, answer)]
```

Import that module before building the runner; the config then names it with a weight
(``reward.weights = {"contains_answer": 1.0, "length": 0.1}``), and
[`RewardRunner`][giftjax.rewards.RewardRunner] calls it once per row, in parallel, under a time
limit: a call that raises, hangs, or returns NaN or the wrong number of values scores 0, is counted
  and logged,
and never stops the run.

Built-in rewards: ``exact_match`` and ``length`` (see `giftjax.rewards.builtin`);
``synthetic``, the synthetic task's partial-credit score (`giftjax.rewards.synthetic`);
verified math rewards ``gsm8k``, ``math`` and ``format`` (see `giftjax.rewards.math`; run
``math`` with ``executor="process"``, whose workers are killed when late).
"""

from giftjax.rewards import builtin, math, synthetic  # noqa: F401  (register the rewards)
from giftjax.rewards.registry import get, names, register
from giftjax.rewards.runner import RewardResult, RewardRunner

__all__ = ["RewardResult", "RewardRunner", "get", "names", "register"]
