"""DPO on preference pairs from data: file sources with custom field names, the synthetic task.

The chosen response is the row's ``data.demonstration_field``, the rejected one its
``data.rejected_field`` (the synthetic task's own ``rejected`` column); a file source without
a rejected field is refused with the key to set.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from configs import smoke_cpu
from giftjax import data as data_lib
from giftjax import sharding
from giftjax.data.synthetic import SyntheticTask, rejected_response
from giftjax.train import config as config_lib
from giftjax.train import loop
from giftjax.train import rollout as rollout_lib

ROWS = [
    {"question": f"reverse {d} =", "target": d[::-1], "good": d[::-1], "bad": d}
    for d in ("123", "4567", "890", "2468", "1357", "9021", "3344", "5566")
]


def _jsonl(tmp_path) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2), encoding="utf-8")
    return str(path)


def _config(tmp_path, **data):
    c = smoke_cpu.get_config("short")
    c.algo.name = "dpo"
    c.data.source = "jsonl"
    c.data.path = _jsonl(tmp_path)
    c.data.prompt_field = "question"
    c.data.answer_field = "target"
    c.data.demonstration_field = "good"
    c.data.rejected_field = "bad"
    for key, value in data.items():
        c.data[key] = value
    c.rollout.prompts_per_step = 16
    c.train.micro_batches = 2
    c.train.steps = 1
    c.train.warmup_sft_steps = 0
    c.eval.every = 0
    c.log.tensorboard = False
    c.log.progress = False
    return c


def test_jsonl_source_copies_the_named_response_fields(tmp_path):
    c = _config(tmp_path)
    src = data_lib.get_source(c.data, split="train")
    assert src[0] == {"prompt": "reverse 123 =", "answer": "321", "good": "321", "bad": "123"}


def test_dpo_on_jsonl_with_custom_fields_trains_a_step(tmp_path):
    c = _config(tmp_path)
    trainer = loop.Trainer(c, str(tmp_path / "run"))
    try:
        rows = rollout_lib.records(next(trainer.data))
        batch = rollout_lib.preference_batch(
            rows, tokenizer=trainer.tokenizer, config=c, mesh=trainer.mesh
        )
        # The pairs are the rows' own fields: chosen "good", rejected "bad" (not invented).
        tok = trainer.tokenizer
        for side, field in (("chosen", "good"), ("rejected", "bad")):
            ids = np.asarray(batch[f"{side}_tokens"])[0, c.data.max_prompt_len :]
            mask = np.asarray(batch[f"{side}_mask"])[0] > 0
            text = tok.decode(ids[mask], skip_special_tokens=True).replace(" ", "")
            assert text == rows[0][field], (side, text, rows[0])
        before = [np.asarray(x) for x in jax.tree.leaves(trainer.state.params)]
        metrics = trainer.step(0)
        after = [np.asarray(x) for x in jax.tree.leaves(trainer.state.params)]
    finally:
        trainer.close()
    assert math.isfinite(metrics["loss"]) and metrics["grad/norm"] > 0
    assert 0.0 <= metrics["dpo/reward_accuracy"] <= 1.0
    assert max(float(np.abs(a - b).max()) for a, b in zip(after, before, strict=True)) > 0


def test_dpo_on_file_data_without_a_rejected_field_names_the_key(tmp_path):
    c = _config(tmp_path, rejected_field="")
    with pytest.raises(config_lib.ConfigError, match=r"data\.rejected_field"):
        config_lib.validate(c, num_devices=8)


def test_a_row_without_its_rejected_text_names_the_key(tmp_path):
    c = _config(tmp_path, rejected_field="missing")
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    rows = [{"prompt": r["question"], "good": r["good"]} for r in ROWS]
    with pytest.raises(ValueError, match=r"'missing'.*data\.rejected_field"):
        rollout_lib.preference_batch(
            rows, tokenizer=data_lib.build_tokenizer(), config=c, mesh=mesh
        )


def test_synthetic_task_emits_its_rejected_column():
    for item in SyntheticTask(size=20, seed=3):
        assert item["rejected"] == rejected_response(item["demonstration"])
        assert item["rejected"] != item["demonstration"]
