"""A misbehaving reward for the trainer's tests, registered at import (``tests_flaky``).

Its behaviour depends on the completion's length, so that a few steps of random-ish model
output meet every failure: length % 4 == 0 raises, == 1 returns NaN, == 2 hangs (past any
sensible time limit; released by ``RELEASE`` or after 5 s), == 3 returns 0.5.
"""

import math
import threading

from giftjax import rewards

RELEASE = threading.Event()


@rewards.register("tests_flaky")
def flaky(prompts, completions, **unused_columns):
    kind = len(completions[0]) % 4
    if kind == 0:
        raise RuntimeError("flaky reward raised on purpose")
    if kind == 1:
        return [math.nan]
    if kind == 2:
        RELEASE.wait(5.0)
    return [0.5]
