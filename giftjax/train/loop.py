"""The training loop: rollout, updates, metrics, evaluation and checkpoints, resumable.

``train(config, workdir)`` runs ``train.warmup_sft_steps`` SFT steps on demonstrations (if
any), then ``train.steps`` steps of ``algo.name``, each running the passes its run plan
(`giftjax.train.plan.RunPlan`) names. The frozen reference of
``algo.reference="initial"`` (and of dpo) is the model after the warm-up. An RL step is:

```
rows = next(data)                                  # P prompts (grain, per host)
rollout = generate_rollout(params, rows, ...)      # G samples each, decoded, rewarded
old, ref = log-probs under pi_old / the reference  # once per rollout batch
for u in range(train.updates_per_rollout):         # whole groups per update
    state = update(state, rows of update u)        # micro-batched, exact
log, eval, checkpoint
```

``dpo`` and ``sft`` train on preference pairs / demonstrations of the same rows instead, and
``hybrid`` mixes an SFT branch on the rows' demonstrations with the RL branch under GAC.

Resumption: a checkpoint holds the train state (params, optimiser, reference) and the data
iterator's state; step ``s`` draws its randomness from ``fold_in(seed, s)``; rewards run on the
host and are deterministic functions of the completions. Re-running the same command on the
same WORKDIR therefore continues from the newest checkpoint and ends with the same parameters
and metrics, bit for bit, as a run that was never interrupted; ``metrics.jsonl`` keeps rows up
to the checkpoint and the resumed run writes the rest once. SIGTERM or SIGINT stop the loop
after the step in progress, save once and return (exit code 0).

Multi-host (``giftjax.distributed``): every process runs this same loop. Each reads
``P / process_count`` prompts per step, its block of the global batch; the rollout is sampled
on the global mesh and each host decodes and scores its own rows, which become global arrays
again for the update. Metrics are gathered from every host before they are reduced, only
process 0 writes files, checkpoints are saved and restored by all processes together, and the
stop flag is exchanged after every step, so a SIGTERM on any one host stops all of them after
the same step with one checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec

from giftjax import data as data_lib
from giftjax import distributed, losses, models, rewards
from giftjax import sharding as sharding_lib
from giftjax import workdir as workdir_lib
from giftjax.train import accumulate, run_config
from giftjax.train import checkpoint as ckpt_lib
from giftjax.train import config as config_lib
from giftjax.train import evaluate as eval_lib
from giftjax.train import metrics as metrics_lib
from giftjax.train import rollout as rollout_lib
from giftjax.train import state as state_lib
from giftjax.train import updates as updates_lib
from giftjax.train.logprobs import make_logps_fn
from giftjax.train.metrics import MetricsLogger
from giftjax.train.plan import RunPlan
from giftjax.train.stop import StopSignal

log = logging.getLogger("giftjax")


class Trainer:
    """Holds a run's parts; ``run()`` trains to ``total_steps`` and returns the last metrics.

    Args:
      config: the run's config (validated here).
      workdir: the run's directory; a training run resumes from its newest checkpoint.
      read_only: open an existing run for evaluation only (``python -m giftjax.eval``):
        config.json must exist and may differ only in ``run_config.EVAL_KEYS``; nothing is
        written (no config.json, metrics, data iterator or reward error log) and no checkpoint
        is restored until `restore` is called. `run` is refused.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, read_only: bool = False):
        self.config = config
        self.workdir = workdir
        self.read_only = read_only
        if not read_only:
            os.makedirs(workdir, exist_ok=True)
        config_lib.validate(config, num_devices=jax.device_count())
        c = config
        self.is_main = jax.process_index() == 0
        self.mesh = sharding_lib.make_mesh(config_lib.mesh_shape(c, jax.device_count()))
        self.rules = sharding_lib.get_rules(c.mesh.rules)
        self.tokenizer = state_lib.load_tokenizer(c)
        self.train_source, self.eval_sources = eval_lib.sources(c.data, seed=c.seed)

        self.plan = plan = RunPlan.from_config(c, jax.device_count())
        plan.check_processes(jax.process_count())
        self.lora, self.warmup, self.total_steps = plan.lora, plan.warmup_steps, plan.total_steps
        self.rl_name = plan.rl_loss
        self._build_state(c)
        self._build_programs(c)
        self.schedule = state_lib.learning_rate_schedule(c, plan.total_updates)

        self.checkpointer = ckpt_lib.Checkpointer(
            os.path.join(workdir, workdir_lib.CHECKPOINTS),
            every=c.checkpoint.every,
            keep=c.checkpoint.keep,
            async_save=c.checkpoint.async_save,
            read_only=read_only,
        )
        allow = run_config.EVAL_KEYS if read_only else run_config.RESUMABLE_KEYS
        run_config.check_config(workdir, config_lib.to_dict(c), allow=allow, write=not read_only)
        self.base_key = jax.random.wrap_key_data(jax.device_get(self.state.rng))
        self.start_step = 0
        writes_log = self.is_main and not read_only
        self.runner = rewards.RewardRunner(
            dict(c.reward.weights),
            time_limit=c.reward.time_limit,
            workers=c.reward.workers,
            executor=c.reward.executor,
            error_log=os.path.join(workdir, workdir_lib.REWARD_ERRORS) if writes_log else None,
        )
        self.data = None
        self.logger = None
        if read_only:
            return
        self.data = data_lib.prompt_iterator(
            data_lib.prompt_dataset(
                self.train_source,
                batch_size=c.rollout.prompts_per_step // jax.process_count(),
                seed=c.seed,
                shard_index=jax.process_index(),
                shard_count=jax.process_count(),
            )
        )
        latest = self.checkpointer.latest_step()
        if latest is not None:
            data_state = self.restore(latest)
            if data_state is not None:
                self.data.set_state(data_state)
            self.start_step = latest
        self.logger = MetricsLogger.for_run(c, workdir, self.total_steps, is_main=self.is_main)
        if latest is not None:
            self.logger.resume(latest)

    def _build_state(self, c: ml_collections.ConfigDict) -> None:
        """The policy (with its adapters), the optimiser and the placed train state."""
        vocab = len(self.tokenizer)
        model = state_lib.build_model(c, self.mesh, vocab_size=sharding_lib.round_up(vocab, 8))
        if model.config.vocab_size < vocab:
            raise ValueError(
                f"the model's vocabulary ({model.config.vocab_size}) is smaller than the "
                f"tokenizer's ({vocab}); set config.model.vocab_size >= {vocab}."
            )
        model, self.base_graphdef = state_lib.add_lora(model, c, self.mesh)
        self.tx = state_lib.make_optimizer(c, self.plan.total_updates)
        self.graphdef, state = state_lib.init_state(
            model, self.tx, seed=c.seed, keep_reference=self.plan.keeps_reference, lora=self.lora
        )
        self.state_sharding = state_lib.state_shardings(state, self.mesh, self.rules)
        self.state = jax.device_put(state, self.state_sharding)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.num_params = state_lib.num_params(self.state.params)

    def _build_programs(self, c: ml_collections.ConfigDict) -> None:
        """The jitted passes the plan runs: the update (and the warm-up's SFT update) and the
        no-gradient log-prob passes (pi_old under the policy, the reference under the initial
        model: the kept copy, or with LoRA the base weights through the base graphdef)."""
        plan, tp = self.plan, c.data.max_prompt_len
        self.update_ctx = ctx = updates_lib.UpdateContext.create(
            self.graphdef, self.tx, c, mesh=self.mesh, state_sharding=self.state_sharding
        )
        self.update = updates_lib.make_update(ctx)
        # An SFT run's update is the warm-up's (one jit, compiled once).
        self.sft_update = None
        if plan.builds_sft_update:
            self.sft_update = (
                self.update if plan.family == "sft" else updates_lib.make_sft_update(ctx)
            )
        param_sh = self.state_sharding.params
        ref_graphdef, ref_sh = self.graphdef, param_sh
        if self.lora:
            ref_graphdef, ref_sh = self.base_graphdef, models.lora.base_state(param_sh)
        # Rollout rows share their prompt in groups; demonstrations (temperature 1) do not.
        rollout = {"temperature": c.rollout.temperature, "group_size": plan.logps_group_size}
        demo = {"temperature": 1.0, "group_size": 1}
        kw = {"mesh": self.mesh, "prompt_len": tp}
        # Built whatever the plan (jax.jit compiles on first call); _rl_step and _dpo_step
        # call them as plan.needs_old / plan.needs_ref say.
        self.logps = make_logps_fn(self.graphdef, c, param_sharding=param_sh, **rollout, **kw)
        self.ref_logps, self.demo_ref_logps = (
            make_logps_fn(ref_graphdef, c, param_sharding=ref_sh, **t, **kw)
            for t in (rollout, demo)
        )

    def restore(self, step: int) -> Any:
        """Loads checkpoint ``step`` into the state (and the base key from it); returns the
        data iterator's state stored with it. A missing step raises FileNotFoundError listing
        the finished ones."""
        abstract = state_lib.abstract_state(self.state, self.state_sharding)
        self.state, data_state = self.checkpointer.restore(step, abstract)
        self.base_key = jax.random.wrap_key_data(jax.device_get(self.state.rng))
        return data_state

    # --------------------------------------------------------------------------------------

    def _set_step(self, step: int) -> None:
        self.state = self.state.replace(step=jax.device_put(jnp.int32(step), self.replicated))

    def run(self) -> dict[str, float]:
        """Trains from the newest checkpoint (or the start) to the end; returns the last
        logged metrics. Stops early, after saving, on SIGTERM/SIGINT."""
        if self.read_only:
            raise RuntimeError("this Trainer was opened read_only (evaluation); it cannot train.")
        c = self.config
        last: dict[str, float] = {}
        if self.start_step >= self.total_steps:
            log.info("workdir already holds the final checkpoint (step %d)", self.start_step)
            self.close()
            return last
        with StopSignal() as stop:
            for step in range(self.start_step, self.total_steps):
                metrics = self.step(step)
                done = step + 1
                if (c.eval.every and done % c.eval.every == 0) or done == self.total_steps:
                    metrics.update(self.evaluate(done))
                if done % c.log.every == 0 or done == self.total_steps:
                    self.logger.log(done, metrics)
                    last = {"step": done, **metrics}
                final = done == self.total_steps
                # Every host takes part in this (tiny) collective each step, so a SIGTERM on
                # any one of them stops all of them after the same step, with one checkpoint.
                stopping = distributed.any_process(stop.requested)
                if self.checkpointer.should_save(done) or final or stopping:
                    self.checkpointer.save(
                        done, self.state, data_state=self.data.get_state(), force=True
                    )
                if stopping and not final:
                    log.warning("stop requested: saved step %d; re-run to resume", done)
                    break
        self.close()
        return last

    def step(self, step: int) -> dict[str, float]:
        """Runs step ``step`` (0-based): the next data batch, then a warm-up SFT update or the
        algorithm's step. Returns its metrics (host floats, ``time/...`` included); the
        state's step counter becomes ``step + 1``."""
        t0 = time.perf_counter()
        rows = rollout_lib.records(next(self.data))
        key = jax.random.fold_in(self.base_key, step)
        if step < self.warmup:
            metrics = self._warmup_step(rows)
            if step + 1 == self.warmup and self.state.ref_params is not None:
                # The reference is the model the algorithm starts from: the warm-up's result,
                # not the random initialisation it was copied from.
                ref = jax.tree.map(jnp.copy, self.state.params)
                ref = jax.device_put(ref, self.state_sharding.ref_params)
                self.state = self.state.replace(ref_params=ref)
        else:  # the plan's family: rl and hybrid sample, dpo and sft train on the rows
            family_step = {"dpo": self._dpo_step, "sft": self._sft_step}.get(self.plan.family)
            metrics = family_step(rows) if family_step else self._rl_step(rows, key, step)
        done = step + 1
        self._set_step(done)
        metrics["lr"] = float(self.schedule(max(self.plan.updates_before(done) - 1, 0)))
        metrics["time/step"] = time.perf_counter() - t0
        return metrics

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()
        if self.logger is not None:
            self.logger.close()
        self.runner.close()

    # --------------------------------------------------------------------------------------

    def _sft_step(self, rows, update=None) -> dict[str, float]:
        """One SFT update on the rows' demonstrations: ``update`` (the warm-up's) or the
        run's own (the sft algorithm)."""
        t0 = time.perf_counter()
        batch = rollout_lib.demonstration_batch(
            rows, tokenizer=self.tokenizer, config=self.config, mesh=self.mesh
        )
        self.state, m = (update or self.update)(self.state, batch)
        out = metrics_lib.host_floats(m)
        out["time/update"] = time.perf_counter() - t0
        return out

    def _warmup_step(self, rows) -> dict[str, float]:
        return {**self._sft_step(rows, self.sft_update), "phase/sft_warmup": 1.0}

    def _dpo_step(self, rows) -> dict[str, float]:
        t0 = time.perf_counter()
        batch = rollout_lib.preference_batch(
            rows, tokenizer=self.tokenizer, config=self.config, mesh=self.mesh
        )
        ref = self._reference_params()  # the initial model (dpo's, whatever algo.reference)
        t_ref = time.perf_counter()
        for side in ("chosen", "rejected"):
            lp = self.demo_ref_logps(ref, batch[f"{side}_tokens"], batch[f"{side}_attn"])
            batch[f"ref_{side}"] = losses.sequence_logps(lp, batch[f"{side}_mask"])
        t_ref = time.perf_counter() - t_ref
        self.state, m = self.update(self.state, batch)
        out = metrics_lib.host_floats(m)
        out["time/reference"] = t_ref
        out["time/update"] = time.perf_counter() - t0 - t_ref
        return out

    def _reference_params(self) -> Any:
        """The initial model's parameters: the kept copy, or with LoRA the policy's base
        weights (the same arrays; the adapters are left out)."""
        if self.lora:
            return models.lora.base_state(self.state.params)
        return self.state.ref_params

    def _rl_step(self, rows, key: jax.Array, step: int) -> dict[str, float]:
        c = self.config
        ro = rollout_lib.generate_rollout(
            self.graphdef,
            self.state.params,
            rows,
            tokenizer=self.tokenizer,
            runner=self.runner,
            config=c,
            mesh=self.mesh,
            key=key,
            step=step + 1,
        )
        plan = self.plan
        batch = ro.batch()
        t_ref = time.perf_counter()
        if plan.advantage is not None:
            batch["advantages"] = _advantages(
                ro.rewards, group_size=c.rollout.group_size, method=plan.advantage
            )
        if plan.needs_old:
            batch["old_logps"] = self.logps(self.state.params, ro.tokens, ro.attn_mask)
        if plan.needs_ref:
            ref = self._reference_params()
            batch["ref_logps"] = self.ref_logps(ref, ro.tokens, ro.attn_mask)
        elif plan.ref_from_old:
            batch["ref_logps"] = batch["old_logps"]  # reference "old": pi_old
        jax.block_until_ready(batch)
        t_ref = time.perf_counter() - t_ref

        t_upd = time.perf_counter()
        batches = [batch]
        if plan.family == "hybrid":
            batches.append(
                rollout_lib.demonstration_batch(
                    rows, tokenizer=self.tokenizer, config=c, mesh=self.mesh
                )
            )
        per_update = []
        u = plan.updates_per_step  # whole groups (and demonstrations) per update
        split = [accumulate.split_updates(b, u) for b in batches]
        for parts in zip(*split, strict=True):
            self.state, m = self.update(self.state, *parts)
            per_update.append(m)
        out = metrics_lib.mean_host_floats(per_update)
        for key in ("logprob/mismatch", "logprob/tis_truncated", "logprob/tis_weight_mean"):
            if key in per_update[0]:  # the first update's (the weights were the sampler's)
                out[key] = float(per_update[0][key])
        t_upd = time.perf_counter() - t_upd
        out.update(
            metrics_lib.rollout_metrics(
                ro, prompt_len=c.data.max_prompt_len, seconds={"reference": t_ref, "update": t_upd}
            )
        )
        if self.is_main and c.log.samples and (step + 1) % c.log.every == 0:
            rows = metrics_lib.sample_rows(ro, group_size=plan.samples, prompts=c.log.samples)
            self.logger.log_samples(step + 1, rows)
        return out

    def evaluate(self, step: int) -> dict[str, float]:
        """The ``eval/...`` metrics of the current parameters as the run logs them at ``step``
        (the state after ``step`` steps), with that step's evaluation key
        ``fold_in(fold_in(base_key, step), 1)``."""
        return eval_lib.evaluate(
            self.graphdef,
            self.state.params,
            self.eval_sources,
            tokenizer=self.tokenizer,
            runner=self.runner,
            config=self.config,
            mesh=self.mesh,
            key=jax.random.fold_in(jax.random.fold_in(self.base_key, step), 1),
            step=step,
        )


_advantages = jax.jit(losses.group_advantages, static_argnames=("group_size", "method"))


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint if any)."""
    return Trainer(config, workdir).run()
