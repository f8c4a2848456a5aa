"""Prompt templates: how a data set's prompt text becomes the text the model reads.

- `"plain"`: `system + "\\n" + prompt + suffix` (no system: `prompt + suffix`); for base models
  and the synthetic tasks.
- `"chat"`: the tokenizer's own chat template with a generation prompt, for instruct models:
  `tokenizer.apply_chat_template([{"role": "system", ...}, {"role": "user", "content": prompt +
  suffix}], add_generation_prompt=True, tokenize=False)`.

The config key `data.template` picks one.
"""

from __future__ import annotations

__all__ = ["TEMPLATES", "render_prompt"]

TEMPLATES = ("plain", "chat")


def render_prompt(
    tokenizer, prompt: str, *, template: str = "plain", system: str | None = None, suffix: str = ""
) -> str:
    """Renders one prompt with a template (see the module docstring).

    Args:
      tokenizer: a Hugging Face tokenizer (its `chat_template` is used by "chat").
      prompt: the data set's prompt text.
      template: "plain" or "chat" (config key `data.template`).
      system: an optional system message.
      suffix: text appended to the prompt (e.g. an instruction on the answer format).

    Returns:
      The text to tokenise (special tokens written out, so encode it without adding more).
    """
    if template not in TEMPLATES:
        raise ValueError(f"data.template={template!r}; expected one of {TEMPLATES}.")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str; received {type(prompt).__name__}.")
    if template == "plain":
        return prompt + suffix if system is None else f"{system}\n{prompt}{suffix}"
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"data.template='chat' but the tokenizer {type(tokenizer).__name__} "
            f"({getattr(tokenizer, 'name_or_path', '') or 'unnamed'}) has no chat_template; "
            "use data.template='plain' or a tokenizer with a chat template."
        )
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": prompt + suffix})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
