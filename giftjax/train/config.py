"""The trainer's config: every key with its default, and the checks run before a run starts.

Recipes (``configs/*.py``) start from [`base_config`][giftjax.train.base_config] and change what
they need; the command line overrides any key (``--config.train.steps=100``) through absl and
ml_collections. The config is locked, so a misspelt key fails at once; ml_collections checks
each override's type. [`validate`][giftjax.train.validate] then checks what types cannot: choices,
ranges and the divisibility of the batch by the mesh, the groups and the micro-batches. Every error
names the key, the value received and what would be valid.

Sections (see the README's "Config keys" table for each key's meaning):

- ``seed``: the one source of randomness (step ``s`` uses ``fold_in(seed, s)``).
- ``model``: a preset name or a local Hugging Face checkpoint, dtypes, remat, tokenizer.
- ``mesh``: axis sizes over ``("data", "fsdp", "tensor")`` (-1 takes the rest) and the
  logical-axis rules table.
- ``data``: the prompt source (``synthetic``, ``jsonl``, ``parquet``, ``gsm8k``,
  ``math500`` or ``tfds``), its fields, the instruction appended to each prompt, the prompt
  template.
- ``reward``: reward name -> weight, the time limit of each call, the worker pool.
- ``rollout``: P prompts per step, G samples per prompt, sampling settings.
- ``algo``: the algorithm name (which picks the loss and the loop), the reference policy,
  and each loss's own arguments in its sub-section.
- ``optim``, ``train``, ``checkpoint``, ``log``, ``eval``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

ALGOS = ("gift", "grpo", "dapo", "dr_grpo", "gspo", "hybrid", "dpo", "sft")
RL_ALGOS = ("gift", "grpo", "dapo", "dr_grpo", "gspo", "hybrid")  # sample every step
OFFLINE_ALGOS = ("dpo", "sft")  # train on their own data, no rollout
GRPO_FAMILY = ("grpo", "dapo", "dr_grpo", "gspo")
REFERENCES = ("old", "initial")
SCHEDULES = ("constant", "cosine", "linear")
DATA_SOURCES = ("synthetic", "jsonl", "parquet", "gsm8k", "math500", "tfds")
# The sources that read the file data.path (and data.eval_path).
FILE_SOURCES = ("jsonl", "parquet", "gsm8k", "math500")
# The standard instructions (data.instruction) of the GSM8K and MATH recipes: they ask for the
# final-answer format the gsm8k and math rewards read.
GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
TEMPLATES = ("plain", "chat")
OLD_LOGPS = ("recompute", "sampler")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
EXECUTORS = ("thread", "process")
DTYPES = ("float32", "bfloat16")
REMATS = ("none", "full", "dots", "dots_no_batch", "save_qkv_proj")
SHAPE_KEYS = (
    "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
)  # fmt: skip


def _placeholder(kind: type) -> Any:
    """A typed field whose value is None until set ("use the preset's value")."""
    return config_dict.placeholder(kind)


def base_config() -> ml_collections.ConfigDict:
    """Every trainer key with its default: the tiny model on the synthetic task with GIFT."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # --- Model: a preset built from scratch, or a local Hugging Face checkpoint.
    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"  # giftjax.models.presets.PRESETS; ignored when hf_path is set
    c.model.hf_path = ""  # a local checkpoint folder (config.json + safetensors)
    c.model.vocab_size = 0  # 0: the preset's; the synthetic task sets its tokenizer's size
    c.model.dtype = "float32"  # compute dtype
    c.model.param_dtype = "float32"  # storage dtype of the parameters
    c.model.remat = "none"
    c.model.tokenizer = "synthetic"  # "synthetic" (built on the fly) or a tokenizer folder
    c.model.shape = ml_collections.ConfigDict()  # overrides of the preset's shape (None: keep)
    for key in SHAPE_KEYS:
        c.model.shape[key] = _placeholder(int)
    # LoRA (giftjax/models/lora.py, through qwix): rank 0 trains every weight.
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 0  # > 0: train rank-r adapters only, the base weights stay frozen
    c.model.lora.alpha = 16.0  # the adapter update is scaled by alpha / rank (PEFT's lora_alpha)
    c.model.lora.targets = "q,k,v,o,gate,up,down"  # comma-separated projections to adapt
    c.model.lora.dropout = 0.0  # only 0 is supported
    # also train an offset on every RMSNorm gain (a few thousand numbers; PEFT modules_to_save)
    c.model.lora.train_norms = False

    # --- Mesh: sizes over ("data", "fsdp", "tensor"); -1 takes the remaining devices.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.mesh.rules = "fsdp"  # "fsdp" or "fsdp_tp" (giftjax.sharding.RULES)

    # --- Data: where prompts (and answers, demonstrations) come from.
    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"
    c.data.kind = "add"  # the synthetic task's kind
    # The file of the train split for source="jsonl", "parquet", "gsm8k" or "math500"; for
    # source="tfds" the folder written by `python -m giftjax.data.prepare NAME --out DIR`.
    c.data.path = ""
    c.data.eval_path = ""  # held-out file (empty: no held-out eval for these sources)
    c.data.tfds_name = "gsm8k"  # source="tfds": the prepared data set, "gsm8k" or "math500"
    c.data.tfds_split = "train"  # source="tfds": the split trained on
    c.data.tfds_eval_split = ""  # source="tfds": the held-out split ("": no held-out eval)
    c.data.prompt_field = "prompt"
    c.data.answer_field = "answer"
    c.data.demonstration_field = ""  # JSONL field with a full response (sft/hybrid)
    c.data.rejected_field = ""  # file data: field with DPO's rejected response ("": none)
    c.data.template = "plain"  # or "chat": the tokenizer's chat template
    c.data.system = ""  # system message for the chat template
    c.data.instruction = ""  # appended to every prompt after a space ("": none)
    c.data.train_size = 100_000  # synthetic rows per split
    c.data.eval_size = 64  # held-out prompts evaluated
    c.data.max_prompt_len = 32  # prompts are left-padded to this many tokens
    c.data.max_response_len = 16  # demonstration length for sft/dpo/hybrid
    c.data.wrong_demonstrations = 0.0  # synthetic: share of deliberately wrong demonstrations

    # --- Reward: registered name -> weight (giftjax.rewards.get); each call time-limited.
    c.reward = ml_collections.ConfigDict()
    c.reward.weights = ml_collections.ConfigDict({"synthetic": 1.0})
    c.reward.time_limit = 5.0  # seconds per call
    c.reward.workers = 4
    c.reward.executor = "thread"  # or "process" (killable; for CPU-heavy verifiers)

    # --- Rollout: P prompts x G samples per step.
    c.rollout = ml_collections.ConfigDict()
    c.rollout.prompts_per_step = 8
    c.rollout.group_size = 4
    c.rollout.max_new_tokens = 16
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0
    c.rollout.stop_at_eos = True  # False: always max_new_tokens tokens (benchmarks)
    # pi_old of the GRPO-family ratio: "recompute" (a trainer pass over the rollout batch when
    # updates_per_rollout > 1) or "sampler" (the sampler's log-probs, no pass, with a truncated
    # importance weight min(exp(trainer - sampler), tis_cap); see giftjax/train/objectives.py).
    c.rollout.old_logps = "recompute"
    c.rollout.tis_cap = 2.0

    # --- Algorithm: the name picks the loss and the loop.
    c.algo = ml_collections.ConfigDict()
    c.algo.name = "gift"
    c.algo.reference = "old"  # the policy of the implicit reward / KL: "old" or "initial"
    c.algo.gift = ml_collections.ConfigDict()
    c.algo.gift.beta = 1.0
    c.algo.gift.preset = ""  # "" (safe default, std floor) or "author"
    c.algo.gift.std_floor = _placeholder(float)  # None: the loss's default
    c.algo.grpo = ml_collections.ConfigDict()  # used by grpo, dapo, dr_grpo, gspo
    c.algo.grpo.advantage = "grpo"  # "grpo", "dr_grpo" or "rloo"
    c.algo.grpo.clip_low = _placeholder(float)  # None: the preset's value
    c.algo.grpo.clip_high = _placeholder(float)
    c.algo.grpo.kl_coef = _placeholder(float)
    c.algo.grpo.agg = _placeholder(str)
    c.algo.dpo = ml_collections.ConfigDict()
    c.algo.dpo.beta = 0.1
    c.algo.dpo.loss_type = "sigmoid"
    c.algo.dpo.label_smoothing = 0.0
    c.algo.sft = ml_collections.ConfigDict()
    c.algo.sft.weighting = "none"  # or "chord"
    c.algo.hybrid = ml_collections.ConfigDict()
    c.algo.hybrid.rl = "gift"  # the RL branch: gift or a GRPO-family name
    c.algo.hybrid.sft_weighting = "chord"
    c.algo.gac = ml_collections.ConfigDict()  # giftjax.optim.gac's arguments
    c.algo.gac.mode = "adaptive"
    c.algo.gac.smoothing = "separate"
    c.algo.gac.estimator = "gradient"
    c.algo.gac.alpha = 0.5
    c.algo.gac.blend = 0.5
    c.algo.gac.ema = 0.99
    c.algo.gac.refresh_every = 10
    c.algo.gac.max_step = 0.01
    c.algo.gac.init = 0.5
    c.algo.gac.prior_warmup = 200  # CHORD prior: linear 0 -> peak over warmup steps,
    c.algo.gac.prior_decay = 800  # then cosine peak -> end over decay steps
    c.algo.gac.prior_peak = 0.85
    c.algo.gac.prior_valley = 0.15
    # Measure the gradient estimator's statistics every update (mode "fixed"/"prior" then still
    # log the mu GAC would choose). False: a plain fixed/prior-weight step, the baseline of a
    # fair overhead measurement; needs mode "fixed" or "prior".
    c.algo.gac.collect_stats = True

    # --- Optimiser: AdamW after global-norm clipping.
    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-4
    c.optim.schedule = "constant"  # "constant", "cosine" (to 0) or "linear" (to 0)
    c.optim.warmup_steps = 0  # optimiser updates of linear warm-up
    c.optim.clip_norm = 1.0  # 0 disables clipping
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999

    # --- Training length and batching.
    c.train = ml_collections.ConfigDict()
    c.train.steps = 100  # rollout steps (offline algorithms: update steps)
    c.train.updates_per_rollout = 1  # optimiser updates per rollout batch, whole groups each
    c.train.micro_batches = 1  # gradient accumulation per update
    c.train.warmup_sft_steps = 0  # SFT steps on demonstrations before the first rollout
    # Log-prob passes over RL batches run each prompt once per group, not G times (same
    # log-probs up to float rounding; see Decoder.shared_prefix_hidden).
    c.train.share_prompts = True

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 50  # steps; the last step is always saved
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.log = ml_collections.ConfigDict()
    c.log.every = 1
    c.log.samples = 4  # prompts written to samples.jsonl on each logged step
    c.log.tensorboard = True
    c.log.progress = True
    c.log.wandb_project = ""  # set to log to Weights & Biases (pip install wandb)

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0  # steps; 0 disables periodic evaluation
    c.eval.num_samples = 4  # k of mean@k / pass@k (temperature sampling)
    return c


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is valid."""


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"config.{key}={value!r} is not valid; choose one of {allowed}.")


def check_at_least(key: str, value: float, low: float, what: str = "") -> None:
    if not value >= low:
        raise ConfigError(f"config.{key}={value!r} must be >= {low}{what}.")


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """The mesh sizes with -1 resolved, checked against the number of devices."""
    sizes = {a: int(config.mesh[a]) for a in ("data", "fsdp", "tensor")}
    if list(sizes.values()).count(-1) > 1:
        raise ConfigError(f"config.mesh {sizes}: at most one size may be -1.")
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ConfigError(f"config.mesh.{axis}={size} must be >= 1 or -1 (the rest).")
    known = math.prod(s for s in sizes.values() if s != -1)
    if -1 in sizes.values():
        if num_devices % known:
            raise ConfigError(
                f"config.mesh {sizes}: {num_devices} devices are not divisible by {known}."
            )
        sizes = {a: (num_devices // known if s == -1 else s) for a, s in sizes.items()}
    if math.prod(sizes.values()) != num_devices:
        raise ConfigError(
            f"config.mesh {sizes} needs {math.prod(sizes.values())} devices; "
            f"{num_devices} are available."
        )
    return sizes


def validate(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
    """Checks every value types cannot; raises ConfigError naming the key and the fix."""
    from giftjax.train import config_checks as checks  # it imports this module's lists

    c = config
    check_choice("algo.name", c.algo.name, ALGOS)
    check_choice("algo.reference", c.algo.reference, REFERENCES)
    check_choice("model.dtype", c.model.dtype, DTYPES)
    check_choice("model.param_dtype", c.model.param_dtype, DTYPES)
    check_choice("model.remat", c.model.remat, REMATS)
    check_choice("mesh.rules", c.mesh.rules, ("fsdp", "fsdp_tp"))
    check_choice("data.source", c.data.source, DATA_SOURCES)
    check_choice("data.template", c.data.template, TEMPLATES)
    check_choice("reward.executor", c.reward.executor, EXECUTORS)
    check_choice("optim.schedule", c.optim.schedule, SCHEDULES)
    check_choice("algo.hybrid.rl", c.algo.hybrid.rl, ("gift", *GRPO_FAMILY))
    check_choice("algo.gift.preset", c.algo.gift.preset, ("", "author"))
    check_choice("rollout.old_logps", c.rollout.old_logps, OLD_LOGPS)
    if not c.rollout.tis_cap >= 1.0:
        raise ConfigError(
            f"config.rollout.tis_cap={c.rollout.tis_cap!r} must be >= 1 (the truncated "
            "importance weight min(exp(trainer - sampler), cap) must allow weight 1)."
        )
    checks.check_lora(c.model.lora)
    if not c.model.hf_path and not c.model.preset:
        raise ConfigError("config.model.preset is empty and config.model.hf_path is not set.")
    checks.check_data(c)

    r = c.rollout
    for key in ("prompts_per_step", "group_size", "max_new_tokens"):
        check_at_least(f"rollout.{key}", r[key], 1)
    check_at_least("rollout.temperature", r.temperature, 0.0, " (0 is greedy)")
    if not 0.0 < r.top_p <= 1.0:
        raise ConfigError(f"config.rollout.top_p={r.top_p!r} must be in (0, 1] (1 disables).")
    check_at_least("rollout.top_k", r.top_k, 0, " (0 disables)")
    if c.algo.name in RL_ALGOS and r.temperature == 0 and r.group_size > 1:
        raise ConfigError(
            "config.rollout.temperature=0 (greedy) makes the G samples of a prompt identical, "
            "so every group has zero reward variance; use a temperature > 0."
        )
    for key in ("steps", "updates_per_rollout", "micro_batches"):
        check_at_least(f"train.{key}", c.train[key], 1)
    check_at_least("train.warmup_sft_steps", c.train.warmup_sft_steps, 0)
    check_at_least("checkpoint.every", c.checkpoint.every, 1)
    check_at_least("checkpoint.keep", c.checkpoint.keep, 1)
    check_at_least("log.every", c.log.every, 1)
    check_at_least("log.samples", c.log.samples, 0)
    check_at_least("eval.every", c.eval.every, 0, " (0 disables)")
    check_at_least("eval.num_samples", c.eval.num_samples, 1)
    check_at_least("reward.time_limit", c.reward.time_limit, 1e-3)
    check_at_least("reward.workers", c.reward.workers, 1)
    check_at_least("optim.learning_rate", c.optim.learning_rate, 0.0)
    check_at_least("optim.clip_norm", c.optim.clip_norm, 0.0, " (0 disables)")
    check_at_least("optim.warmup_steps", c.optim.warmup_steps, 0)
    weights = dict(c.reward.weights)
    if c.algo.name in RL_ALGOS and not weights:
        raise ConfigError("config.reward.weights is empty; name at least one reward function.")
    for name, w in weights.items():
        if not isinstance(w, int | float) or not math.isfinite(w):
            raise ConfigError(f"config.reward.weights.{name}={w!r} must be a finite number.")
    checks.check_batches(c, num_devices)
    if c.algo.name == "hybrid":
        checks.check_gac(c)


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON-able Python (what ``config.json`` stores)."""

    def plain(x: Any) -> Any:
        if isinstance(x, Mapping | ml_collections.ConfigDict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        return x

    return plain(config.to_dict())
