"""`lmstack quickstart` (= `make demo`): every layer in turn, from nothing to an evaluated tool-using model.

It sits beside `cli.py`, above the layers, because it orchestrates all of them (data, train, infer, evals).

Stages run in order on one shared `Quickstart` record; a later layer extends the demo by appending
a stage (`STAGES.append(("sft", run_sft))`) or passing `stages=`. Each stage is idempotent: a re-run
reuses the data and resumes training, so an interrupted demo picks up where it stopped.

Measured on an idle 2-core machine: tokenizer + data 4 s, pretraining 1.6 min, SFT 4.5 min, evals 8 s.
`--steps`, `--sft-steps` and `--until STAGE` shorten it for a quick try.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lmstack.config import load_config
from lmstack.data.toolcalls import tokenizer_texts
from lmstack.train.config import TrainConfig
from lmstack.train.commands import SIGNAL_EXIT_CODES

if TYPE_CHECKING:  # the CLI imports this module to register `quickstart`: torch loads only when a stage runs
    from lmstack.train.loop import TrainResult

# Sized for a few minutes on 2 CPU cores: 1.9M parameters (4 layers of width 128, vocab 4096) see 1.5M
# tokens in 360 steps of 4096 (9.8 MFLOP/token, 1.4e13 FLOPs in all): 1.6 minutes on an idle 2-core EPYC
# (0.26 s a step, evals included). For this budget a small model on more
# tokens beats a wide one on fewer (Chinchilla: compute-optimal N ~ sqrt(C / 120) ~ 0.35M).
VOCAB_SIZE = 4096
CHAT_TEXTS = 1000  # synthetic tool-use conversations mixed into the tokenizer's corpus
PRETRAIN_SETTINGS: dict[str, Any] = {
    "run_name": "quickstart",
    "device": "cpu",
    "model": {"arch": "llama", "vocab_size": VOCAB_SIZE, "block_size": 256, "n_layer": 4, "n_head": 2,
              "n_embd": 128},
    "batch_size": 16, "seq_len": 256, "max_steps": 360,
    "lr": 3e-3, "warmup_steps": 20, "schedule": "cosine", "min_lr_ratio": 0.1,
    "eval_every": 40, "eval_batches": 4, "checkpoint_every": 120, "keep_last": 1,
    "sample_prompts": ["def", "import", "class", "    for"],
}
SAMPLE_PROMPTS = ["def", "class", "import os\n", "    if"]


@dataclass
class Quickstart:
    run_dir: Path
    data_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)  # extra settings for the pretraining config
    corpus_limit: int | None = None  # use only the first N stdlib files (tests, quick tries)
    sft_steps: int | None = None  # the SFT stage's steps, when not its default
    pretrain: TrainResult | None = None
    interrupted_by: str | None = None
    outputs: list[tuple[str, Path]] = field(default_factory=list)  # (what, where), printed at the end
    timings: dict[str, float] = field(default_factory=dict)


def default_data_dir(run_dir: Path) -> Path:
    """$LMSTACK_HOME/data/stdlib when set (shared by every run), else inside the run dir."""
    home = os.environ.get("LMSTACK_HOME")
    return Path(home) / "data" / "stdlib" if home else run_dir / "data"


def stage_data(qs: Quickstart) -> None:
    """Train a BPE tokenizer on the stdlib corpus and tokenize the corpus into shards (skipped if present)."""
    from lmstack.data.prepare import META_FILE, prepare
    from lmstack.data.sources import document_count, iter_documents
    from lmstack.tokenizer import Tokenizer

    if (qs.data_dir / META_FILE).is_file() and (qs.data_dir / "tokenizer.json").is_file():
        print(f"data: reusing {qs.data_dir}")
    else:
        total = qs.corpus_limit or document_count("stdlib")
        texts = (doc.text for doc in iter_documents("stdlib", limit=qs.corpus_limit))
        # + the SFT stage's tool-use chats, so they fit the 256-token context (236 -> 178 tokens on average)
        texts = itertools.chain(texts, tokenizer_texts(CHAT_TEXTS))
        tokenizer = Tokenizer.train(texts, VOCAB_SIZE, total=total + CHAT_TEXTS)
        result = prepare("stdlib", qs.data_dir, tokenizer, limit=qs.corpus_limit)
        print(f"data: {result.train.tokens:,} train and {result.val.tokens:,} val tokens in {qs.data_dir}")
    qs.outputs.append(("tokenizer", qs.data_dir / "tokenizer.json"))
    qs.outputs.append(("token shards", qs.data_dir))


def pretrain_config(qs: Quickstart) -> TrainConfig:
    """The demo's pretraining settings with the caller's overrides; `quickstart` builds it before any stage runs,
    so that a mistyped override is refused before the data stage's minutes, not after."""
    overrides = [f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
                 for key, value in qs.overrides.items()]
    base = {**PRETRAIN_SETTINGS, "run_dir": str(qs.run_dir), "data_dir": str(qs.data_dir)}
    return load_config(TrainConfig, overrides=overrides, base=base)


def stage_pretrain(qs: Quickstart) -> None:
    from lmstack.train.loop import train

    qs.pretrain = train(pretrain_config(qs))
    qs.interrupted_by = qs.pretrain.interrupted_by
    qs.outputs += [("checkpoint", qs.pretrain.last_checkpoint), ("metrics", qs.run_dir / "metrics.jsonl"),
                   ("loss curve", qs.run_dir / "loss.png"), ("run log", qs.run_dir / "run.log")]


def stage_samples(qs: Quickstart) -> None:
    """Samples from the final checkpoint, with the same sampler `lmstack sample` uses."""
    from lmstack.model.checkpoint import load_model_dir
    from lmstack.train.evaluate import draw_samples

    model, tokenizer, _ = load_model_dir(qs.pretrain.last_checkpoint)
    texts = draw_samples(model, tokenizer, SAMPLE_PROMPTS, max_new_tokens=80, temperature=0.7, top_k=40, seed=0)
    print("\nsamples from the pretrained model:")
    for text in texts:
        print("-" * 60 + "\n" + text)
    print("-" * 60)


def stage_sft(qs: Quickstart) -> None:
    """Tool-use SFT from the pretraining checkpoint (lmstack.train.sft_stage)."""
    from lmstack.train.sft_stage import stage_sft as run

    run(qs)


def stage_evals(qs: Quickstart) -> None:
    """The demo model scored with and without tools on the built-in eval tasks, plus an HTML report."""
    from lmstack.evals.demo import stage_evals as evaluate  # lazy: only the last stage needs the eval layer

    evaluate(qs)


Stage = Callable[[Quickstart], None]
STAGES: list[tuple[str, Stage]] = [("data", stage_data), ("pretrain", stage_pretrain), ("samples", stage_samples),
                                   ("sft", stage_sft), ("evals", stage_evals)]


def quickstart(run_dir: str | Path = "runs/quickstart", data_dir: str | Path | None = None,
               stages: list[tuple[str, Stage]] | None = None, corpus_limit: int | None = None,
               sft_steps: int | None = None, **overrides: Any) -> Quickstart:
    """Run the demo's stages; `overrides` are pretraining settings (e.g. max_steps=50, **{"model.n_layer": 2})."""
    stages = STAGES if stages is None else stages
    for item in stages:  # checked before any stage runs: a mistake found after the data stage wastes its minutes
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and callable(item[1])):
            raise TypeError(f"quickstart stages must be (name, function) pairs, e.g. [('data', stage_data)] or "
                            f"STAGES[:2], got {item!r:.60}")
    run_dir = Path(run_dir)
    qs = Quickstart(run_dir, Path(data_dir) if data_dir else default_data_dir(run_dir), overrides, corpus_limit,
                    sft_steps)
    if stage_pretrain in (stage for _, stage in stages):
        pretrain_config(qs)
    for name, stage in stages:
        print(f"\n==== quickstart: {name}")
        start = time.perf_counter()
        stage(qs)
        qs.timings[name] = time.perf_counter() - start
        if qs.interrupted_by:
            print(f"quickstart interrupted by {qs.interrupted_by}; run it again to continue")
            return qs
    print_summary(qs)
    return qs


def print_summary(qs: Quickstart) -> None:
    from lmstack.train.sft_stage import SFT_MODEL

    print("\n==== quickstart: done in " + ", ".join(f"{k} {v:.0f}s" for k, v in qs.timings.items()))
    for what, where in qs.outputs:
        print(f"  {what:<14} {where}")
    if qs.pretrain and qs.pretrain.last_checkpoint:
        print(f"\nnext: lmstack sample {qs.pretrain.last_checkpoint} --prompt 'def'")
    chat_model = dict(qs.outputs).get(SFT_MODEL)
    if chat_model:
        print(f"      lmstack chat {chat_model}          # or: lmstack serve {chat_model}  (OpenAI API + dashboard)")


def register(subparsers: argparse._SubParsersAction) -> None:
    quick = subparsers.add_parser(
        "quickstart", help="the demo: tokenizer, data, pretraining, samples, tool-use SFT and evals on a laptop CPU",
        description="Train a tokenizer on the Python stdlib, prepare shards, pretrain a small GPT, print samples, "
                    "fine-tune it to call tools, and evaluate it with and without tools (an HTML report).")
    quick.add_argument("--run-dir", default="runs/quickstart", help="where everything goes (default runs/quickstart)")
    quick.add_argument("--steps", type=int, default=None,
                       help=f"pretraining steps (default {PRETRAIN_SETTINGS['max_steps']}: ~1.5 minutes on 2 cores)")
    # 1000: train/sft_stage.py's SFT_SETTINGS, not imported here so that --help does not load torch
    quick.add_argument("--sft-steps", type=int, default=None,
                       help="tool-use SFT steps (default 1000: ~4.5 minutes; fewer steps get fewer arguments right)")
    quick.add_argument("--until", choices=[name for name, _ in STAGES], default=STAGES[-1][0],
                       help="the last stage to run (default: all of them)")
    quick.set_defaults(func=run_quickstart)


def run_quickstart(args: argparse.Namespace) -> int:
    from lmstack.errors import LmstackError

    for flag, steps in (("--steps", args.steps), ("--sft-steps", args.sft_steps)):
        if steps is not None and steps < 1:
            raise LmstackError(f"{flag} {steps}: train at least 1 step (or leave {flag} out for the default)")
    names = [name for name, _ in STAGES]
    if args.sft_steps is not None and names.index(args.until) < names.index("sft"):
        raise LmstackError(f"--sft-steps has no stage to shorten with --until {args.until}; drop one of them")
    overrides = {} if args.steps is None else {"max_steps": args.steps}
    result = quickstart(args.run_dir, stages=STAGES[:names.index(args.until) + 1], sft_steps=args.sft_steps,
                        **overrides)
    return SIGNAL_EXIT_CODES.get(result.interrupted_by, 0)
