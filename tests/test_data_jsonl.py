"""JsonlSource: records, field mapping, and errors that name the file and the line."""

import json
import os

import pytest

from giftjax.data import JsonlSource

SHARED_GSM8K = os.path.join("..", "shared", "data", "gsm8k", "test.jsonl")


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_records_fields_and_blank_lines(tmp_path):
    rows = [
        {"q": "add 1+2 =", "a": "3", "id": 7, "skip": 1},
        {"q": "two", "a": 42, "id": 8},
        {"q": "three", "a": 0.5, "id": [1, 2]},
    ]
    lines = [json.dumps(rows[0]), "", json.dumps(rows[1]), "   ", json.dumps(rows[2])]
    src = JsonlSource(
        write(tmp_path, lines), prompt_field="q", answer_field="a", extra_fields=["id"]
    )
    assert len(src) == 3
    assert src[0] == {"prompt": "add 1+2 =", "answer": "3", "id": 7}
    assert src[1] == {"prompt": "two", "answer": "42", "id": 8}  # numbers become strings
    assert src[2] == {"prompt": "three", "answer": "0.5", "id": [1, 2]}
    assert src[-1] == src[2]
    src[0]["prompt"] = "changed"  # records are copies
    assert src[0]["prompt"] == "add 1+2 ="


def test_no_answer_field(tmp_path):
    src = JsonlSource(write(tmp_path, ['{"prompt": "p"}']), answer_field=None)
    assert src[0] == {"prompt": "p"}


def test_missing_file_names_path_and_config_key(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl.*data\.path"):
        JsonlSource(path)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"prompt": "p", "answer": ', r"line 2: invalid JSON"),
        ('["prompt", "answer"]', r"line 2: expected a JSON object; found list"),
        ('{"prompt": "p"}', r"line 2: missing field\(s\) \['answer'\]"),
        ('{"prompt": "", "answer": "1"}', r"line 2: prompt field 'prompt' must be a non-empty"),
        ('{"prompt": "  ", "answer": "1"}', r"line 2: prompt field 'prompt' must be a non-empty"),
        ('{"prompt": 3, "answer": "1"}', r"line 2: prompt field 'prompt' must be a non-empty"),
        ('{"prompt": "p", "answer": null}', r"line 2: answer field 'answer' must be a string"),
        ('{"prompt": "p", "answer": true}', r"line 2: answer field 'answer' must be a string"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, bad_line, message):
    path = write(tmp_path, ['{"prompt": "ok", "answer": "1"}', bad_line], name="bad.jsonl")
    with pytest.raises(ValueError, match=r"bad\.jsonl, " + message):
        JsonlSource(path)


def test_missing_extra_field_and_empty_file(tmp_path):
    path = write(tmp_path, ['{"prompt": "ok", "answer": "1"}'])
    with pytest.raises(ValueError, match=r"line 1: missing field\(s\) \['id'\]"):
        JsonlSource(path, extra_fields=["id"])
    with pytest.raises(ValueError, match="no records"):
        JsonlSource(write(tmp_path, ["", ""], name="empty.jsonl"))


@pytest.mark.skipif(not os.path.exists(SHARED_GSM8K), reason="../shared/data/gsm8k is absent")
def test_reads_gsm8k():
    src = JsonlSource(SHARED_GSM8K, prompt_field="question", answer_field="answer")
    assert len(src) == 1319
    assert src[0]["prompt"].startswith("Janet")
    assert src[0]["answer"].rstrip().endswith("#### 18")
