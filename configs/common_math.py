"""Shared settings of the GSM8K and MATH production recipes (not a recipe itself).

Each ``configs/<task>_<model>_<algo>.py`` calls :func:`recipe` and changes what differs. The
numbers are paper-style settings for GIFT (Wang, "GIFT: Group-relative Implicit Fine Tuning",
arXiv 2510.23868, which trains Qwen2.5 7B-32B on GSM8K and MATH); where a value comes from a
source the comment says so, everything else is our choice for a first run and says why:

- G = 8 samples per prompt, temperature 1: the group size of GRPO-family math recipes (our
  choice; the GIFT losses need G >= 2 and gain little past 8 for a binary reward).
- GIFT with pi_old as reference and 4 updates per rollout batch: the author's released code
  (docs/development/architecture.md; with one update and pi_old every update is GIFT's
  degenerate case).
- beta = 1: the GIFT loss's default (the paper shows beta cancels in the z-scored target).
- learning rate 1e-6, AdamW, clipping at 1.0, no weight decay: the usual full fine-tuning
  rate for RL on 0.5B-32B instruct models (our choice).
- bf16 compute, float32 parameters and optimiser moments (master weights): Adam updates of
  lr 1e-6 vanish in bf16 storage.
- ``remat="full"``: the 7B and larger recipes fit their topologies with it (``giftjax.aot``).

The model is a local Hugging Face checkpoint folder (``model.hf_path``, also the tokenizer);
the default path is a placeholder to override, nothing is downloaded. Data are local JSONL
files in the published layouts (``data.path``, ``data.eval_path``; see the README's "Tasks and
rewards").
"""

from __future__ import annotations

import ml_collections

from giftjax.train import config as config_lib

TASKS = {
    # task -> (data.source, train file, eval file, instruction, reward weights, Tp, M)
    "gsm8k": (
        "gsm8k",
        "data/gsm8k/train.jsonl",
        "data/gsm8k/test.jsonl",
        config_lib.GSM8K_INSTRUCTION,
        {"gsm8k": 1.0, "format": 0.1},
        256,  # GSM8K questions with the chat template stay under 256 Qwen/Llama tokens
        512,  # reference solutions are ~100-300 tokens; room for longer reasoning
    ),
    "math": (
        "math500",
        "data/math/train.jsonl",  # MATH train in the MATH-500 layout (problem, answer, ...)
        "data/math500/test.jsonl",
        config_lib.MATH_INSTRUCTION,
        {"math": 1.0, "format": 0.1},
        512,  # MATH problems are longer (tables, asy figures)
        1024,  # MATH solutions need more room than GSM8K's
    ),
}


def recipe(*, task: str, preset: str, checkpoint: str) -> ml_collections.ConfigDict:
    """The shared recipe for ``task`` ("gsm8k" or "math") with model ``preset``.

    Args:
      task: a key of TASKS.
      preset: the model preset of the checkpoint's shapes (``giftjax.aot`` and the tests
        build the model from it; the run reads ``hf_path``'s config.json).
      checkpoint: the placeholder checkpoint folder (override ``--config.model.hf_path``).
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}; known tasks: {sorted(TASKS)}.")
    source, train, evals, instruction, weights, tp, m = TASKS[task]
    c = config_lib.base_config()
    c.seed = 0

    # --- Model: a local checkpoint (weights and tokenizer), bf16 compute, f32 master weights.
    c.model.preset = preset
    c.model.hf_path = checkpoint
    c.model.tokenizer = ""  # "": the checkpoint folder's tokenizer
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"

    # --- Mesh: FSDP over every chip (parameters and Adam moments split 1/N per chip).
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.mesh.rules = "fsdp"

    # --- Data: the task's local JSONL files, the chat template, the standard instruction.
    c.data.source = source
    c.data.path = train
    c.data.eval_path = evals
    c.data.template = "chat"
    c.data.instruction = instruction
    c.data.max_prompt_len = tp
    c.data.max_response_len = m
    c.data.eval_size = 500  # MATH-500 whole; the first 500 of GSM8K's 1319 test questions

    # --- Reward: the verified answer plus a small format reward; sympy-backed checks run
    # in killable worker processes (hostile completions cannot hang a step).
    c.reward.weights = ml_collections.ConfigDict(weights)
    c.reward.time_limit = 10.0
    c.reward.workers = 8
    c.reward.executor = "process"

    # --- Rollout: P prompts x G samples per step.
    c.rollout.prompts_per_step = 64
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = m
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0

    # --- Algorithm: GIFT against pi_old, 4 updates per rollout batch (the author's code).
    c.algo.name = "gift"
    c.algo.reference = "old"
    c.algo.gift.beta = 1.0

    # --- Optimiser.
    c.optim.learning_rate = 1e-6
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.clip_norm = 1.0
    c.optim.weight_decay = 0.0

    # --- Length: 200 steps x 64 prompts is about 1.7 epochs of GSM8K's 7473 questions.
    c.train.steps = 200
    c.train.updates_per_rollout = 4
    c.train.micro_batches = 1

    c.checkpoint.every = 20
    c.checkpoint.keep = 3
    c.log.every = 1
    c.log.samples = 4
    c.eval.every = 20
    c.eval.num_samples = 4
    return c
