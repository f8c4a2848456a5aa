"""A random-access source over a Parquet file, with named fields (pyarrow).

Like [`JsonlSource`][giftjax.data.JsonlSource], the whole file is read and every row checked when
the source is built (`giftjax.data.records.to_record`): a missing field, an empty prompt or an
answer that is neither a string nor a number stops a run at start with the file and the 1-based
row named. Needs ``pyarrow`` (``pip install giftjax[data]``).
"""

from __future__ import annotations

from typing import Any

from giftjax.data.records import FileRecords

__all__ = ["ParquetSource"]


def _read_rows(path: str, columns: list[str]) -> list[dict[str, Any]]:
    """The rows of a Parquet file as dicts holding only ``columns``; a missing column is an
    error naming it and the file's columns."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            "data.source='parquet' needs pyarrow: pip install 'giftjax[data]' (or pyarrow)."
        ) from e
    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{path}: not a readable Parquet file ({e}).") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ValueError(
            f"{path}, row 1: missing field(s) {missing}; the file has columns "
            f"{sorted(schema.names)} (choose the fields with data.prompt_field / "
            "data.answer_field)."
        )
    return pq.read_table(path, columns=list(dict.fromkeys(columns))).to_pylist()


class ParquetSource(FileRecords):
    """Random access over the records of a Parquet file (grain's source protocol).

    Each row must hold the prompt field (a non-empty string), the answer field (a string or a
    number, returned as a string) and every extra field (returned as pyarrow converts it); a
    null counts as a value of the wrong type. Records are ``{"prompt", "answer", <extra>...}``.

    Args:
      path: the Parquet file (config key `data.path`).
      prompt_field: the column holding the prompt text (`data.prompt_field`).
      answer_field: the column holding the reference answer (`data.answer_field`); None reads
        no answer.
      extra_fields: more columns to copy into each record.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is not Parquet, a column is missing, a row has an empty or
        non-string prompt or an answer that is neither a string nor a number, or the file has
        no rows; the message names the file and the 1-based row.
    """

    FORMAT = "Parquet"

    def _read(self) -> list[dict[str, Any]]:
        wanted = [
            self.prompt_field,
            *([self.answer_field] if self.answer_field else []),
            *self.extra_fields,
        ]
        records = [
            self._record(row, f"{self.path}, row {i}")
            for i, row in enumerate(_read_rows(self.path, wanted), start=1)
        ]
        if not records:
            raise ValueError(f"{self.path}: no records (the file has no rows).")
        return records
