"""The pretraining loop: `train(cfg)` runs (or resumes) a run in `cfg.resolved_run_dir`.

Steps are numbered from 1; checkpoint `step_000040` holds the state after 40 optimizer steps. Order
within a step: lr for the step -> forward/backward over the micro-batches -> all-reduced loss and grad
norm -> guard -> optimizer step -> metrics -> eval (+ samples, plot) -> checkpoint -> stop on signal.
Only rank 0 writes files; every rank takes part in every collective in the same order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from lmstack.config import format_config, to_dict
from lmstack.device import (autocast_context, autocast_dtype, detect_device, device_for_rank, init_distributed,
                            peak_flops)
from lmstack.errors import LmstackError
from lmstack.data.loader import LoaderError, ShardLoader
from lmstack.data.prepare import data_vocab_size
from lmstack.model.checkpoint import load_model_dir
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer
from lmstack.train import checkpoint as ckpt
from lmstack.train.batches import GlobalBatchLoader
from lmstack.train.config import TrainConfig
from lmstack.train.distributed import (any_rank, barrier, broadcast_object, gather_objects, mean_across_ranks,
                                      process_group_scope, sum_across_ranks)
from lmstack.train.evaluate import draw_samples, evaluate, token_byte_lengths
from lmstack.train.guards import LossGuard
from lmstack.train.flops import pass_flops_per_token
from lmstack.train.metrics import MetricsLog, memory_mb, mfu, read_metrics
from lmstack.train.optim import build_optimizers
from lmstack.train.plots import plot_losses
from lmstack.train.resume import check_resumable
from lmstack.train.rng import capture_rng, restore_rng, seed_everything
from lmstack.train.rundir import (append_log, ensure_writable, refuse_foreign_dir, removed_if_left_empty,
                                 write_run_header)
from lmstack.train.rundir_lock import RunDirLock
from lmstack.train.runinfo import code_version, environment
from lmstack.train.schedules import lr_multiplier, set_lr
from lmstack.train.val import val_batches
from lmstack.train.writers import ScalarWriters, check_writers_installed


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    val_loss: float | None
    interrupted_by: str | None  # "SIGINT" / "SIGTERM" when a signal ended the run early
    samples: list[str]


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str = "auto"):
        self.cfg = cfg
        self.device_info = detect_device(cfg.device)
        self.dist = init_distributed(self.device_info)
        self.device = device_for_rank(self.device_info, self.dist)
        self.is_main = self.dist.is_main
        self.run_dir = cfg.resolved_run_dir
        self.lock = RunDirLock(self.run_dir)  # held by rank 0, the one that writes, until the `with` block ends
        # A start that fails its checks (data, tokenizer, --resume, LoRA targets, W&B) leaves no run dir behind that
        # it made: its lock file goes, then the dirs, now empty.
        with removed_if_left_empty(self.run_dir, enabled=self.is_main):
            try:
                self._start(resume)
            except BaseException:
                self.lock.release()
                raise

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.lock.release()

    def _start(self, resume: str) -> None:
        self._check_run_dir()
        self.tokenizer = self._load_tokenizer()
        resume_from = self._find_resume_point(resume)
        saved_config = ckpt.check_resume_point(resume_from) if resume_from is not None else None
        self.cfg = cfg = self._with_vocab_size(saved_config)
        self.config_dict = to_dict(cfg)
        if saved_config is not None:
            check_resumable(resume_from, saved_config, self.config_dict, cfg.other_run_dir_option())
        self.grad_accum = cfg.grad_accum_steps(self.dist.world_size)
        self.rows_per_step = cfg.batch_size * self.grad_accum * self.dist.world_size  # windows, pairs or prompts
        self.tokens_per_step = self.rows_per_step * cfg.seq_len
        self.open_val_split()  # before the model build, so that a bad split is refused at once
        seed_everything(cfg.seed + self.dist.rank)  # per-rank streams (dropout), same init via build_model's seed
        self.model = self.build_model(resume_from)
        self.model.train()
        self.forward_model = self._wrap_model()
        self.optimizers = build_optimizers(self.model, cfg, self.device)
        self.loader = self.build_loader()
        self.step_metrics: dict[str, float] = {}  # extra per-step figures a subclass's compute_loss reports
        self.guard = LossGuard(cfg.guard)
        self.step, self.best_val, self.last_val = 0, math.inf, None
        self.tokens: int | None = 0  # tokens trained on so far, every process's; None: unknown (see _restore)
        self.last_checkpoint: Path | None = None
        amp_dtype = autocast_dtype(self.device_info, cfg.dtype)
        self.autocast = autocast_context(self.device.type, amp_dtype)
        # fp16 (GPUs without bf16) needs loss scaling; with any other dtype the scaler passes everything through.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        if resume_from:
            self._restore(resume_from, restore_loader=True)
            self.last_checkpoint = resume_from
        self.flops_per_token = pass_flops_per_token(self.model, cfg.seq_len)
        self.step_flops = 0.0  # this process's model FLOPs in the last step, for MFU
        self.step_tokens = 0  # this process's tokens in the last step, for tokens and tokens_per_s
        self.peak_flops = peak_flops(self.device_info, amp_dtype) * self.dist.world_size
        self.byte_lengths = token_byte_lengths(self.tokenizer, cfg.model.vocab_size, self.device)
        self.stop_signal: str | None = None
        self.nan_hook_fired = False
        self.samples: list[str] = []
        self._open_logs(resume_from)

    # ---- setup ---------------------------------------------------------------------------------
    def _on_main(self, work: Callable[[], None]) -> None:
        """Do `work` on rank 0 and raise its LmstackError on every rank: a rank left out would wait forever in the
        next collective for the one that stopped."""
        error = None
        if self.is_main:
            try:
                work()
            except LmstackError as err:
                error = str(err)
        error = broadcast_object(error)
        if error:
            raise LmstackError(error)

    def _check_run_dir(self) -> None:
        def check() -> None:
            check_writers_installed(self.cfg.tensorboard, self.cfg.wandb)  # before the run dir is made
            refuse_foreign_dir(self.run_dir, self.cfg.other_run_dir_option(),
                               (Path(self.cfg.data_dir), self.cfg.tokenizer_path))
            ensure_writable(self.run_dir, self.cfg.other_run_dir_option())
            self.lock.acquire()  # before anything in the dir is touched, a running writer's checkpoint writes included
            ckpt.clean_interrupted_writes(self.run_dir)
        self._on_main(check)

    def _load_tokenizer(self) -> Tokenizer:
        data_dir = Path(self.cfg.data_dir)
        if self.cfg.tokenizer is None and not (data_dir / "tokenizer.json").is_file():
            problem = ("has no tokenizer.json: it is not a data dir written by `lmstack prepare`" if data_dir.is_dir()
                       else "is a file, not a directory" if data_dir.exists() else "does not exist")
            raise LmstackError(f"data dir '{data_dir}' {problem}; create it with `lmstack prepare --tokenizer DIR "
                               f"--out {data_dir}` or point --set data_dir=DIR at one")
        return Tokenizer.load(self.cfg.tokenizer_path)

    def _with_vocab_size(self, saved_config: dict | None) -> TrainConfig:
        """The config with an unset model.vocab_size filled in: a resumed run keeps the one it was saved with
        (`saved_config`, its checkpoint's); a new run takes the data's (meta.json, as nanoGPT takes meta.pkl's;
        the tokenizer's without one)."""
        cfg, tokenizer = self.cfg, self.tokenizer
        vocab_size = cfg.model.vocab_size
        if vocab_size is None and saved_config is not None:
            vocab_size = saved_config["model"]["vocab_size"]
        elif vocab_size is None:
            vocab_size = data_vocab_size(cfg.data_dir) or tokenizer.vocab_size
        if tokenizer.vocab_size > vocab_size:
            have = f"the tokenizer '{cfg.tokenizer_path}' has {tokenizer.vocab_size} tokens but"
            if cfg.model.vocab_size is not None:
                fix = f"model.vocab_size={vocab_size}; --set model.vocab_size={tokenizer.vocab_size} (or leave it unset)"
            elif saved_config is not None:
                fix = f"the run's checkpoint has model.vocab_size={vocab_size}: resume with the tokenizer it was trained on"
            else:
                fix = (f"'{cfg.data_dir}/meta.json' says {vocab_size}: the data was prepared with another tokenizer; "
                       "re-run `lmstack prepare` with this one")
            raise LmstackError(f"{have} {fix}")
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))

    def _find_resume_point(self, resume: str) -> Path | None:
        latest = ckpt.latest_checkpoint(self.run_dir)
        if resume == "require" and latest is None:
            raise LmstackError(f"--resume: the run dir '{self.run_dir}' has no checkpoint to resume from; "
                               "run without --resume to start training")
        return latest

    def _wrap_model(self) -> torch.nn.Module:
        model: torch.nn.Module = self.model
        if self.dist.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    def _open_logs(self, resume_from: Path | None) -> None:
        self.metrics = self.writers = None
        self._on_main(self._open_writers)  # first: W&B without a login is refused before anything is written
        if not self.is_main:
            return
        header = {"resumed_from": str(resume_from) if resume_from else None, "step": self.step,
                  **code_version(), **environment(self.device_info, self.dist.world_size),
                  "params": self.model.num_params(), "grad_accum": self.grad_accum,
                  "tokens_per_step": self.tokens_per_step}
        write_run_header(self.run_dir, header, self.config_dict)
        tqdm.write(format_config(self.cfg))
        self.metrics = MetricsLog(self.run_dir, self.step if resume_from else None)
        self.metrics.write({"event": "start", "step": self.step, **header})
        micro_batches = f"{self.grad_accum} micro-batch{'es' if self.grad_accum != 1 else ''}"
        self.say(f"run dir {self.run_dir}: {'resuming from ' + str(resume_from) if resume_from else 'new run'}; "
                 f"{self.model.num_params():,} parameters on {self.device_info.name} x{self.dist.world_size}; "
                 f"{self.step_batch()}/step ({micro_batches} per process)")

    def _open_writers(self) -> None:
        self.writers = ScalarWriters(self.run_dir, self.cfg.tensorboard, self.cfg.wandb, self.cfg.wandb_project,
                                     self.cfg.run_name, self.config_dict)

    def say(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)
            append_log(self.run_dir, message)

    def event(self, name: str, **fields) -> None:
        if self.is_main:
            self.metrics.write({"event": name, "step": self.step, **fields})
            self.say(f"[{name}] step {self.step}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))

    # ---- what fine-tuning subclasses replace (lmstack.train.sft: SFT, LoRA, DPO, GRPO) ------------
    def build_model(self, checkpoint: Path | None) -> torch.nn.Module:
        """The model to train: the weights of `checkpoint` (resume, rollback), else a fresh init."""
        if checkpoint is not None:
            return load_model_dir(checkpoint, self.device, load_tokenizer=False)[0]
        return build_model(self.cfg.model, self.device, seed=self.cfg.seed)

    def open_val_split(self) -> None:
        """Open the val shards once, for every eval, before the model is built: a missing or broken val split is
        refused in a moment, not after the model's build or at the first eval (every run evaluates, at least at
        its last step)."""
        cfg = self.cfg
        self.val_loader = ShardLoader(cfg.data_dir, "val", cfg.batch_size, cfg.seq_len, self.dist.rank,
                                      self.dist.world_size, shuffle=False)

    def build_loader(self):
        """Any object with micro_batches() (this process's batches of one step), state_dict, load_state_dict."""
        cfg = self.cfg
        return GlobalBatchLoader(cfg.data_dir, cfg.batch_size, cfg.seq_len, self.dist.rank,
                                 self.dist.world_size, self.grad_accum, cfg.seed, self.device)

    def compute_loss(self, batch) -> torch.Tensor:
        """One micro-batch's loss, through `forward_model` so that DDP syncs the gradients."""
        x, y = batch
        return self.forward_model(x, y)[1]

    def step_batch(self) -> str:
        """The global batch of a step, for the start line. A trainer whose batches vary in tokens names them in
        its own unit (pairs, prompts) rather than a fixed token count that would be false."""
        return f"{self.tokens_per_step:,} tokens"

    # ---- state ---------------------------------------------------------------------------------
    def train_state(self) -> dict:
        """The state beyond the weights; RNG and loader positions are gathered from every rank."""
        return {
            "step": self.step,
            "tokens": self.tokens,
            "best_val": self.best_val,
            "last_val": self.last_val,
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "guard": self.guard.state_dict(),
            "rng": gather_objects(capture_rng()),
            "loader": gather_objects(self.loader.state_dict()),
            "world_size": self.dist.world_size,
            "scaler": self.scaler.state_dict(),
        }

    def _restore(self, path: Path, restore_loader: bool) -> None:
        state = ckpt.load_train_state(path)
        if state["world_size"] != self.dist.world_size:
            raise LmstackError(f"'{path}' was saved by {state['world_size']} process(es), this run has "
                               f"{self.dist.world_size}; resume with the same number of processes")
        if restore_loader:
            try:
                self.loader.load_state_dict(state["loader"][self.dist.rank])
            except LoaderError as err:  # the loader's text names neither the run nor the data it was given
                raise LmstackError(f"'{path}' cannot be resumed on data_dir '{self.cfg.data_dir}': {err}") from None
        else:  # a rollback: the weights go back, the data stays past the offending batch
            self.model.load_state_dict(self.build_model(path).state_dict())
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        self.guard.load_state_dict(state["guard"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"][self.dist.rank])
        self.step, self.best_val, self.last_val = state["step"], state["best_val"], state["last_val"]
        # A checkpoint saved before the total was kept has no "tokens". step * tokens_per_step is exact for full
        # windows but overstated DPO's padded pairs many times over, so None: the next step's count stands for
        # each step before it (train_one_step), exact for full windows, close for DPO's and GRPO's batches.
        self.tokens = state.get("tokens")

    # ---- one step ------------------------------------------------------------------------------
    def forward_backward(self) -> torch.Tensor:
        """Accumulate gradients over this process's micro-batches; returns the mean loss (detached)."""
        total = torch.zeros((), device=self.device)
        micro_batches = list(self.loader.micro_batches())
        self.step_flops = sum(self.batch_flops(batch) for batch in micro_batches)
        self.step_tokens = sum(self.batch_tokens(batch) for batch in micro_batches)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients on the last micro-batch only; the others just accumulate.
            sync = contextlib.nullcontext() if last or self.dist.world_size == 1 else self.forward_model.no_sync()
            with sync:
                with self.autocast():
                    loss = self.compute_loss(batch)
                if self.cfg.debug_nan_at_step == self.step + 1 and not self.nan_hook_fired:
                    loss = loss * float("nan")
                    self.nan_hook_fired = i == len(micro_batches) - 1
                self.scaler.scale(loss / self.grad_accum).backward()
            total += loss.detach()
        return total / self.grad_accum

    def step_of_all_ranks(self) -> tuple[float, int]:
        """The last step's (model FLOPs, tokens) over every process. Full windows are alike on every rank; DPO's and
        GRPO's padded batches (their own batch_flops and batch_tokens) differ, and only they pay for a collective
        each step, one for both figures."""
        uniform = type(self).batch_flops is Trainer.batch_flops and type(self).batch_tokens is Trainer.batch_tokens
        if self.dist.world_size == 1 or uniform:
            return self.step_flops * self.dist.world_size, self.step_tokens * self.dist.world_size
        # float64: a token count stays exact (to 2^53), where float32 would round it past 2^24
        totals = torch.tensor([self.step_flops, self.step_tokens], dtype=torch.float64, device=self.device)
        flops, tokens = sum_across_ranks(totals).tolist()
        return flops, round(tokens)

    def batch_flops(self, batch) -> float:
        """Model FLOPs of a micro-batch's forward and backward. A trainer whose rows are not full `seq_len`
        windows, or that runs a reference model too, counts its own."""
        return self.cfg.batch_size * self.cfg.seq_len * self.flops_per_token

    def batch_tokens(self, batch) -> int:
        """Tokens a micro-batch trains on: the positions the policy's forward computes, padding included (what
        batch_flops counts), not the reference's forward. A trainer whose rows are not full windows counts its own."""
        return self.cfg.batch_size * self.cfg.seq_len

    def optimizer_step(self) -> tuple[float, float, str | None]:
        """One step: (loss, grad norm, reason the step was skipped or None)."""
        set_lr(self.optimizers, lr_multiplier(self.cfg, self.step))
        loss = mean_across_ranks(self.forward_backward()).item()
        for optimizer in self.optimizers:
            self.scaler.unscale_(optimizer)  # clip and judge the true gradients
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm, foreach=True).item()
        reason = self.guard.check(loss, grad_norm)
        # An fp16 overflow is the scaler's business: it skips the update and lowers its scale.
        fp16_overflow = self.scaler.is_enabled() and math.isfinite(loss) and not math.isfinite(grad_norm)
        if reason is None or fp16_overflow:
            for optimizer in self.optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
            reason = None
            if not fp16_overflow:
                self.guard.accept(loss)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, reason

    def handle_bad_step(self, reason: str) -> None:
        self.guard.reject(self.step, reason)
        if self.cfg.guard.action == "rollback" and self.last_checkpoint is not None:
            bad_step = self.step
            self._restore(self.last_checkpoint, restore_loader=False)
            self.event("rollback", bad_step=bad_step, reason=reason, to=str(self.last_checkpoint))
        else:
            self.event("skip", reason=reason)

    # ---- eval, checkpoints ---------------------------------------------------------------------
    def run_eval(self) -> None:
        cfg = self.cfg
        batches = val_batches(self.val_loader, cfg.eval_batches, self.device)
        result = evaluate(self.model, batches, self.byte_lengths, self.autocast)
        self.last_val = result["val_loss"]
        if not self.is_main:
            return
        self.metrics.write({"step": self.step, **result})
        self.writers.write(self.step, result)
        self.samples = draw_samples(self.model, self.tokenizer, cfg.sample_prompts, cfg.sample_tokens,
                                    cfg.sample_temperature, cfg.sample_top_k, cfg.seed)
        self.say(f"step {self.step}: val loss {result['val_loss']:.4f}, {result['val_bpb']:.4f} bits/byte")
        for text in self.samples:
            self.say("  sample: " + repr(text))
        plot_losses(read_metrics(self.metrics.path), self.run_dir / "loss.png", cfg.log_x, title=cfg.run_name)

    def save(self, final: bool) -> None:
        new_best = self.last_val is not None and self.last_val < self.best_val
        if new_best:
            self.best_val = self.last_val
        state = self.train_state()  # a collective: every rank gathers
        error = None
        if self.is_main:
            try:
                path = ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.tokenizer, self.config_dict,
                                            state, self.cfg.debug_checkpoint_delay)
                if new_best:
                    ckpt.mark_best(self.run_dir, path, self.step, self.best_val)
                ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_last)
                self.last_checkpoint = path
            except ckpt.CheckpointSaveError as err:
                error = str(err)
                self.event("checkpoint_failed", message=error)
        error = broadcast_object(error)
        self.last_checkpoint = broadcast_object(self.last_checkpoint)
        barrier()  # every rank sees the new checkpoint before anyone may roll back to it
        if error and final:
            raise ckpt.CheckpointSaveError(error)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        if self.step >= cfg.max_steps:  # a resumed run that is already there: say so, rather than nothing
            self.say(f"the run is at step {self.step}, and max_steps is {cfg.max_steps}: nothing more to train")
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", disable=not self.is_main,
                   dynamic_ncols=True)
        try:
            while self.step < cfg.max_steps:
                self.train_one_step(bar)
                last = self.step == cfg.max_steps
                stop = any_rank(self.stop_signal is not None, self.device)
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                    self.run_eval()
                improved = self.last_val is not None and self.last_val < self.best_val
                if last or stop or improved or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self.save(final=last or stop)
                if stop:
                    self.say(f"stopped by {self.stop_signal or 'a signal on another rank'} at step {self.step}; "
                             f"checkpoint saved; re-run the same command to resume")
                    break
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close()
        best = ckpt.best_checkpoint(self.run_dir)
        return TrainResult(self.run_dir, self.step, self.last_checkpoint, best, self.last_val,
                           self.stop_signal, self.samples)

    def train_one_step(self, bar: tqdm) -> None:
        t0 = time.perf_counter()
        loss, grad_norm, reason = self.optimizer_step()
        dt = time.perf_counter() - t0
        step_flops, step_tokens = self.step_of_all_ranks()  # a collective for some trainers: before any branch
        if self.tokens is None:  # resumed from a checkpoint without the total: see _restore
            self.tokens = self.step * step_tokens
        self.tokens += step_tokens  # a skipped step's batch is consumed too, as step * tokens_per_step counted it
        self.step += 1
        if reason is not None:
            self.handle_bad_step(reason)
            bar.n = self.step
            return
        tokens_per_s = step_tokens / dt
        record = {"step": self.step, "tokens": self.tokens, "loss": loss,
                  "lr": self.optimizers[-1].param_groups[0]["lr"], "grad_norm": grad_norm,
                  "tokens_per_s": tokens_per_s, "mfu": mfu(step_flops, dt, self.peak_flops),
                  "memory_mb": memory_mb(self.device), "step_s": dt, **self.step_metrics}
        if self.is_main:
            self.metrics.write(record)
            self.writers.write(self.step, {k: record[k] for k in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")})
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            bar.update(self.step - bar.n)

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signal.Signals(signum).name  # acted on after the current step

    def _close(self) -> None:
        if self.is_main:
            self.metrics.close()
            self.writers.close()


def train(cfg: TrainConfig, resume: str = "auto") -> TrainResult:
    """Train (or resume) the run described by `cfg`; `resume`: 'auto' (if a checkpoint exists) or 'require'."""
    with process_group_scope(), Trainer(cfg, resume) as trainer:
        return trainer.run()
