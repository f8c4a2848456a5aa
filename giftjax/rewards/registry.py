"""Name -> reward function registry.

A reward function follows the protocol of [`giftjax.rewards`][giftjax.rewards]:

```
fn(prompts: list[str], completions: list[str], **columns) -> Sequence[float]
```

one value per completion. Register it under a name with [`register`][giftjax.rewards.register], look
it up with [`get`][giftjax.rewards.get]. Registration happens at import time of the module that
defines the function, so a reward used with ``RewardRunner(executor="process")`` must be registered
at module level in an importable module (the worker processes import that module and look the
function up by name).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

RewardFn = Callable[..., Sequence[float]]

# The only module state: registered name -> function.
_REGISTRY: dict[str, RewardFn] = {}


def qualified_name(fn: Any) -> str:
    """Returns ``module.qualname`` of a function, for error messages and re-import checks."""
    module = getattr(fn, "__module__", None) or "<unknown module>"
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{qualname}"


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Returns a decorator that registers a reward function under ``name``.

    Examples:

        ```
        from giftjax import rewards

        @rewards.register("starts_with_answer")
        def starts_with_answer(prompts, completions, *, answer, **unused_columns):
            return [float(c.strip().startswith(str(a))) for c, a in zip(completions, answer)]
        ```

    Registering the same definition again (same module and qualified name, as when a module is
    re-imported or reloaded) replaces the entry; any other function under a taken name is an
    error.

    Args:
      name: the name configs use to refer to the function (``reward.weights`` keys).

    Returns:
      A decorator that registers its argument and returns it unchanged.

    Raises:
      ValueError: if ``name`` is not a non-empty string, or is already taken by another
        function (the message names both functions).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: name must be a non-empty string, got {name!r}")

    def decorator(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise ValueError(f"register({name!r}): expected a callable, got {fn!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and qualified_name(existing) != qualified_name(fn):
            raise ValueError(
                f"register({name!r}): the name is already taken by {qualified_name(existing)}; "
                f"cannot register {qualified_name(fn)} under it. Pick another name."
            )
        _REGISTRY[name] = fn
        return fn

    return decorator


def names() -> list[str]:
    """Returns the registered reward names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> RewardFn:
    """Returns the reward function registered under ``name``.

    Raises:
      ValueError: if no function is registered under ``name``; the message lists the known
        names.
    """
    fn = _REGISTRY.get(name) if isinstance(name, str) else None
    if fn is None:
        raise ValueError(
            f"unknown reward {name!r}; known rewards: {names()}. A reward is registered with "
            "@giftjax.rewards.register(name) when its module is imported."
        )
    return fn
