"""The quickstart's SFT stage: fine-tune the pretrained demo model to call tools, then show it doing so.

Writes the synthetic tool-use splits to <run dir>/toolcalls, runs `lmstack sft` from the pretraining
checkpoint into <run dir>/sft (final model: <run dir>/sft/final), scores tool calls on held-out
conversations, and walks one held-out question through call -> tool result -> answer.
Budget: ~4.5 minutes on 2 idle CPU cores: 1,000 steps of 16 windows of 256 tokens, packed from 16,000
conversations. Measured on the held-out split: 250 steps (the earlier budget) got 14% of calls' arguments
right, 1,000 steps 86%; GRPO needs that spread of right and wrong samples to learn from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmstack.data.toolcalls import generate, run_tool, write_splits
from lmstack.infer.simple import generate as generate_ids
from lmstack.model.checkpoint import load_model_dir
from lmstack.run_layout import RUN_CONFIG
from lmstack.train.resume import same_setting
from lmstack.train.rundir_lock import RunDirLock
from lmstack.train.toolcall_rewards import toolcall_accuracy, toolcall_prompts
from lmstack.train.sft import SFTConfig, load_finetune_config, sft

SFT_MODEL = "SFT model"  # its line in the quickstart's list of outputs, which its closing hints look up

TRAIN_CONVERSATIONS, TEST_CONVERSATIONS, SCORED_CONVERSATIONS = 16000, 200, 60
SFT_SETTINGS: dict[str, Any] = {
    "device": "cpu", "batch_size": 16, "seq_len": 256, "max_steps": 1000, "lr": 1e-3, "warmup_steps": 10,
    "eval_every": 250, "eval_batches": 2, "checkpoint_every": 250, "keep_last": 1, "sample_count": 1,
}


def stage_sft(qs) -> None:
    """A quickstart stage (see lmstack.quickstart): `qs` has run_dir, pretrain, outputs, interrupted_by."""
    data = qs.run_dir / "toolcalls"
    if not (data / "test.jsonl").is_file():
        write_splits(data, TRAIN_CONVERSATIONS, TEST_CONVERSATIONS, seed=0)
    settings = dict(SFT_SETTINGS)
    if qs.sft_steps:  # quickstart --sft-steps
        settings["max_steps"] = qs.sft_steps
    aside = set_aside_if_from_another_start(qs.run_dir / "sft", qs.pretrain.last_checkpoint)
    if aside is not None:
        print(f"the SFT run in {qs.run_dir / 'sft'} fine-tuned an earlier pretraining checkpoint: kept as {aside}; "
              "fine-tuning the latest one")
    cfg = load_finetune_config(SFTConfig, str(qs.pretrain.last_checkpoint), None, [],
                               train_file=str(data / "train.jsonl"), val_file=str(data / "test.jsonl"),
                               run_dir=str(qs.run_dir / "sft"), run_name="quickstart-sft", **settings)
    result = sft(cfg)
    qs.interrupted_by = result.train.interrupted_by
    if result.final is None:
        return
    qs.outputs += [("tool-use data", data), (SFT_MODEL, result.final), ("SFT loss curve", qs.run_dir / "sft/loss.png")]
    show_tool_use(result.final)


def set_aside_if_from_another_start(sft_dir: Path, init_from: Path) -> Path | None:
    """A quickstart re-run with more --steps has a later last checkpoint, and SFT refuses to resume a run from another
    start (it would be recorded as what it is not). The demo's SFT run is the demo's own, so it is not in the way:
    it is kept, renamed beside the new one (sft-from-step_000050), and the new one starts. Returns where it went."""
    config_file = sft_dir / RUN_CONFIG
    if not config_file.is_file():
        return None
    started_from = json.loads(config_file.read_text()).get("init_from")
    if not started_from or same_setting("init_from", started_from, str(init_from)):
        return None
    aside = sft_dir.with_name(f"{sft_dir.name}-from-{Path(started_from).name}")
    lock = RunDirLock(sft_dir)
    lock.acquire()  # refused, naming the process, while another quickstart still trains it
    try:  # held until the run is set aside: a quickstart starting meanwhile would train in the dir being moved
        suffix = 1
        while aside.exists():
            suffix += 1
            aside = sft_dir.with_name(f"{sft_dir.name}-from-{Path(started_from).name}-{suffix}")
        lock.move_dir(aside)
    finally:
        lock.release()
    return aside


def show_tool_use(checkpoint: Path) -> None:
    model, tokenizer, _ = load_model_dir(checkpoint)
    samples = generate(SCORED_CONVERSATIONS, seed=0, split="test")
    prompts = toolcall_prompts(samples, tokenizer, model.cfg.block_size - 64)
    score = toolcall_accuracy(model, tokenizer, prompts)
    print(f"\nheld-out tool use ({SCORED_CONVERSATIONS} conversations, {score['call_turns']} tool-calling turns): "
          f"{score['call_right_tool']:.0%} of calls parse and name the right tool, {score['call_right_args']:.0%} "
          f"also have the right arguments; {score['answer_correct']:.0%} of final answers are right")
    print("(full figure: python bench/toolcall_accuracy.py)")
    walk_through(model, tokenizer, samples[0])


def walk_through(model, tokenizer, sample: dict[str, Any], max_turns: int = 4) -> None:
    """One question, answered by the model with real tool calls parsed from its output and run."""
    messages = [sample["messages"][0]]
    print(f"\nuser: {messages[0]['content']}")
    for turn in range(max_turns):
        prompt = tokenizer.render(messages, sample["tools"], add_generation_prompt=True).ids
        room = model.cfg.block_size - len(prompt)
        if room < 8:
            break
        new = generate_ids(model, prompt, min(64, room), temperature=0.0, stop_ids=tokenizer.stop_ids)
        content, calls = tokenizer.parse_assistant(tokenizer.decode(new))
        if not calls or calls[0].error:
            print(f"assistant: {content or tokenizer.decode(new)}")
            break
        call = calls[0]
        result = run_tool(call.name, call.arguments)
        print(f"assistant calls {call.name}({call.arguments}) -> {result}")
        call_id = f"call_{turn}"
        messages += [{"role": "assistant", "content": content or None, "tool_calls": [
                         {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
                     {"role": "tool", "tool_call_id": call_id, "content": result}]
    print(f"(expected answer: {sample['expected']['answer']})")
