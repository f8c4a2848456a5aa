"""Reward functions for tests/test_rewards.py, registered at import.

They live in their own importable module so that the process executor's workers can import
them (a reward defined inside a test function would not exist there). Each misbehaves on one
trigger completion only and otherwise returns ``SCALE[name] * len(completion)``.
"""

import math
import os
import threading
from pathlib import Path

from giftjax import rewards

SCALE = {
    "tests.raises": 1.0,
    "tests.hangs": 2.0,
    "tests.nan": 3.0,
    "tests.wrong_length": 4.0,
    "tests.not_number": 5.0,
    "tests.exits": 6.0,
}
TRIGGER = {
    "tests.raises": "raise",
    "tests.hangs": "hang",
    "tests.nan": "nan",
    "tests.wrong_length": "long",
    "tests.not_number": "str",
    "tests.exits": "exit",
}
# Set to let hung calls return (thread executor clean-up); they otherwise wait 1000 s.
RELEASE = threading.Event()


def expected(name, completions):
    """The value ``name`` scores on each completion when the runner works: 0 on its trigger."""
    return [0.0 if c == TRIGGER[name] else SCALE[name] * len(c) for c in completions]


def _scaled(name, completions):
    return [SCALE[name] * len(c) for c in completions]


@rewards.register("tests.raises")
def raises(prompts, completions, **unused_columns):
    if completions[0] == TRIGGER["tests.raises"]:
        raise ZeroDivisionError("reward raised on purpose")
    return _scaled("tests.raises", completions)


@rewards.register("tests.hangs")
def hangs(prompts, completions, pid_file=None, **unused_columns):
    if completions[0] == TRIGGER["tests.hangs"]:
        if pid_file is not None and pid_file[0]:
            Path(pid_file[0]).write_text(str(os.getpid()))
        RELEASE.wait(1000)
    return _scaled("tests.hangs", completions)


@rewards.register("tests.nan")
def nan(prompts, completions, **unused_columns):
    if completions[0] == TRIGGER["tests.nan"]:
        return [math.nan]
    return _scaled("tests.nan", completions)


@rewards.register("tests.wrong_length")
def wrong_length(prompts, completions, **unused_columns):
    if completions[0] == TRIGGER["tests.wrong_length"]:
        return [1.0, 2.0]
    return _scaled("tests.wrong_length", completions)


@rewards.register("tests.not_number")
def not_number(prompts, completions, **unused_columns):
    if completions[0] == TRIGGER["tests.not_number"]:
        return ["1.0"]
    return _scaled("tests.not_number", completions)


@rewards.register("tests.exits")
def exits(prompts, completions, **unused_columns):
    """Ends its process on the trigger: use with the process executor only."""
    if completions[0] == TRIGGER["tests.exits"]:
        os._exit(3)
    return _scaled("tests.exits", completions)


@rewards.register("tests.value")
def value(prompts, completions, *, value, **unused_columns):
    """Returns the ``value`` column."""
    return [float(v) for v in value]
