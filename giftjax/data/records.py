"""Checks one raw row of a file data source and maps it to a giftjax record.

Shared by the JSONL, Parquet and TFDS sources, so a bad row gets the same message whatever the
file format: it names where the row is (file and line, or file and row) and what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FileRecords", "to_record"]


def to_record(
    row: Any,
    where: str,
    *,
    prompt_field: str,
    answer_field: str | None,
    extra_fields: Sequence[str] = (),
) -> dict[str, Any]:
    """Returns ``{"prompt": str, "answer": str, <extra fields>...}`` from one raw row.

    Args:
      row: the raw row, a mapping field name -> value (e.g. a parsed JSON object).
      where: where the row is, for error messages (``"data.jsonl, line 3"``).
      prompt_field: the field holding the prompt: a non-empty string.
      answer_field: the field holding the reference answer: a string or a number (returned as
        a string); None reads no answer.
      extra_fields: more fields copied as stored.

    Raises:
      ValueError: the row is not a mapping, a field is missing, the prompt is empty or not a
        string, or the answer is neither a string nor a number; the message starts with
        ``where``.
    """
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected a JSON object; found {type(row).__name__}.")
    wanted = [prompt_field, *([answer_field] if answer_field else []), *extra_fields]
    missing = [k for k in wanted if k not in row]
    if missing:
        raise ValueError(
            f"{where}: missing field(s) {missing}; the row has {sorted(row)} "
            "(choose the fields with data.prompt_field / data.answer_field)."
        )
    prompt = row[prompt_field]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(
            f"{where}: prompt field {prompt_field!r} must be a non-empty string; found {prompt!r}."
        )
    record = {"prompt": prompt}
    if answer_field:
        answer = row[answer_field]
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise ValueError(
                f"{where}: answer field {answer_field!r} must be a string or a number; found "
                f"{type(answer).__name__}."
            )
        record["answer"] = answer if isinstance(answer, str) else str(answer)
    for k in extra_fields:
        record[k] = row[k]
    return record


class FileRecords(Sequence):
    """The part the file sources share: argument checks, the checked records, and grain's
    random access (``len``, ``[i]``, slices; every access returns a copy).

    A subclass names its ``FORMAT`` (for messages) and implements ``_read()``, which reads
    ``self.path`` whole and returns its records, each through `_record`.

    Args:
      path: the file (config key `data.path`).
      prompt_field: the field holding the prompt text (`data.prompt_field`).
      answer_field: the field holding the reference answer (`data.answer_field`); None reads
        no answer.
      extra_fields: more fields to copy into each record (e.g. an id or a difficulty).
    """

    FORMAT = "data"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        prompt_field: str = "prompt",
        answer_field: str | None = "answer",
        extra_fields: Sequence[str] = (),
    ):
        self.path = os.fspath(path)
        if isinstance(extra_fields, str):
            raise TypeError(
                f"extra_fields must be a sequence of field names; received {extra_fields!r}."
            )
        self.prompt_field, self.answer_field = prompt_field, answer_field
        self.extra_fields = tuple(extra_fields)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(
                f"{self.FORMAT} file {self.path!r} not found (set its path with the config key "
                "data.path)."
            )
        self._records: list[dict[str, Any]] = self._read()

    def _read(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _record(self, row: Any, where: str) -> dict[str, Any]:
        return to_record(
            row,
            where,
            prompt_field=self.prompt_field,
            answer_field=self.answer_field,
            extra_fields=self.extra_fields,
        )

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [dict(r) for r in self._records[index]]
        return dict(self._records[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path!r}, prompt_field={self.prompt_field!r}, "
            f"answer_field={self.answer_field!r}, extra_fields={self.extra_fields}, "
            f"rows={len(self)})"
        )
