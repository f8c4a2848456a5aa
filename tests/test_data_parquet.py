"""ParquetSource: records, field mapping, and errors that name the file, the row and the field;
data.source="parquet" through the config."""

import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow (the [data] and [test] extras) is absent")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow.parquet is absent")

from giftjax.data import JsonlSource, ParquetSource, get_source  # noqa: E402
from giftjax.train import config as config_lib  # noqa: E402


def write(tmp_path, columns, name="data.parquet"):
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return path


def test_records_fields_and_types(tmp_path):
    path = write(
        tmp_path,
        {"q": ["add 1+2 =", "two"], "a": ["3", "42"], "id": [7, 8], "skip": [0.5, 1.5]},
    )
    src = ParquetSource(path, prompt_field="q", answer_field="a", extra_fields=["id"])
    assert len(src) == 2
    assert src[0] == {"prompt": "add 1+2 =", "answer": "3", "id": 7}
    assert src[-1] == {"prompt": "two", "answer": "42", "id": 8}
    assert src[:] == [src[0], src[1]]
    src[0]["prompt"] = "changed"  # records are copies
    assert src[0]["prompt"] == "add 1+2 ="


def test_numeric_answers_become_strings(tmp_path):
    src = ParquetSource(write(tmp_path, {"prompt": ["p", "q"], "answer": [42, 7]}))
    assert [r["answer"] for r in src] == ["42", "7"]
    src = ParquetSource(write(tmp_path, {"prompt": ["p"], "answer": [0.5]}, "f.parquet"))
    assert src[0]["answer"] == "0.5"


def test_same_records_as_jsonl(tmp_path):
    rows = [{"prompt": f"question {i}", "answer": str(i * i)} for i in range(5)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(f'{{"prompt": "{r["prompt"]}", "answer": "{r["answer"]}"}}\n'
                             for r in rows))  # fmt: skip
    parquet = write(tmp_path, {k: [r[k] for r in rows] for k in ("prompt", "answer")})
    assert list(ParquetSource(parquet)) == list(JsonlSource(jsonl)) == rows


def test_no_answer_field(tmp_path):
    src = ParquetSource(write(tmp_path, {"prompt": ["p"]}), answer_field=None)
    assert src[0] == {"prompt": "p"}


def test_missing_file_names_path_and_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet.*data\.path"):
        ParquetSource(tmp_path / "nope.parquet")


def test_not_parquet(tmp_path):
    path = tmp_path / "text.parquet"
    path.write_text('{"prompt": "p", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"text\.parquet: not a readable Parquet file"):
        ParquetSource(path)


def test_missing_column_names_field_row_and_columns(tmp_path):
    path = write(tmp_path, {"question": ["p"], "answer": ["1"]}, "bad.parquet")
    with pytest.raises(
        ValueError, match=r"bad\.parquet, row 1: missing field\(s\) \['prompt'\]; .*'question'"
    ):
        ParquetSource(path)
    with pytest.raises(ValueError, match=r"row 1: missing field\(s\) \['id'\]"):
        ParquetSource(path, prompt_field="question", extra_fields=["id"])


@pytest.mark.parametrize(
    "prompts, answers, message",
    [
        (["ok", ""], ["1", "2"], r"row 2: prompt field 'prompt' must be a non-empty string"),
        (["ok", "  "], ["1", "2"], r"row 2: prompt field 'prompt' must be a non-empty string"),
        (["ok", None], ["1", "2"], r"row 2: prompt field 'prompt' must be a non-empty string"),
        (["ok", "p", "q"], ["1", "2", None], r"row 3: answer field 'answer' must be a string"),
        (["ok", "p"], [True, False], r"row 1: answer field 'answer' must be a string"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, prompts, answers, message):
    path = write(tmp_path, {"prompt": prompts, "answer": answers}, "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet, " + message):
        ParquetSource(path)


def test_empty_file(tmp_path):
    path = write(
        tmp_path, {"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())}
    )
    with pytest.raises(ValueError, match="no records"):
        ParquetSource(path)


def test_config_source(tmp_path):
    train = write(tmp_path, {"text": ["a", "b", "c"], "gold": ["1", "2", "3"]}, "train.parquet")
    held = write(tmp_path, {"text": ["d"], "gold": ["4"]}, "eval.parquet")
    c = config_lib.base_config()
    c.data.source = "parquet"
    with pytest.raises(config_lib.ConfigError, match=r"data\.path \(a local \.parquet file"):
        config_lib.validate(c, num_devices=8)
    c.data.path, c.data.eval_path = str(train), str(held)
    c.data.prompt_field, c.data.answer_field = "text", "gold"
    config_lib.validate(c, num_devices=8)
    assert [r["answer"] for r in get_source(c.data)] == ["1", "2", "3"]
    assert get_source(c.data, split="eval")[0] == {"prompt": "d", "answer": "4"}
