"""A random-access source over a JSON Lines file (one JSON object per line).

The whole file is read and checked when the source is built, so a bad row stops a run at start
with the file and line named, not hours later. Each record becomes
`{"prompt": str, "answer": str, <extra fields>...}` whatever the file's field names are.
"""

from __future__ import annotations

import json
from typing import Any

from giftjax.data.records import FileRecords

__all__ = ["JsonlSource"]


class JsonlSource(FileRecords):
    """Random access over the records of a JSONL file (grain's source protocol).

    Blank lines are skipped; every other line must be a JSON object holding the prompt field
    (a non-empty string), the answer field (a string or a number, returned as a string) and
    every extra field (returned as stored).

    Args:
      path: the JSONL file (config key `data.path`).
      prompt_field: the field holding the prompt text (`data.prompt_field`).
      answer_field: the field holding the reference answer (`data.answer_field`); None reads
        no answer.
      extra_fields: more fields to copy into each record (e.g. an id or a difficulty).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: invalid JSON, a line that is not an object, a missing field, an empty or
        non-string prompt, an answer that is neither a string nor a number, or no record at
        all; the message names the file and the 1-based line.
    """

    FORMAT = "JSONL"

    def _read(self) -> list[dict[str, Any]]:
        records = []
        with open(self.path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    records.append(self._parse(line, line_no))
        if not records:
            raise ValueError(f"{self.path}: no records (the file is empty or only blank lines).")
        return records

    def _where(self, line_no: int) -> str:
        return f"{self.path}, line {line_no}"

    def _parse(self, line: str, line_no: int) -> dict[str, Any]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{self._where(line_no)}: invalid JSON ({e.msg} at column {e.colno})."
            ) from None
        return self._record(row, self._where(line_no))
