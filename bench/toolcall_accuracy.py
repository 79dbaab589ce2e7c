"""Tool-use accuracy of a fine-tuned checkpoint on the held-out synthetic split (and, optionally, GRPO).

    python bench/toolcall_accuracy.py [--checkpoint runs/quickstart/sft/final] [--n 200]
    python bench/toolcall_accuracy.py --n 400 --grpo-steps 100 [--grpo-set lr=5e-5 --grpo-set batch_size=64 ...]
        # + a short GRPO run: held-out reward before/after, greedy and sampled (--samples per decision point at
        #   GRPO's temperature, the reward GRPO maximises), each with a paired bootstrap CI of the change

Every decision point of the held-out conversations is answered greedily by the engine. Our figure is
the share of tool-calling turns whose call parses and names the right tool. The peer, measured on the
same turns, is the best constant policy (always call the most frequent expected tool): what a model
that ignores the question would score. Last line: a JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
import time
from pathlib import Path

from _args import require_positive
from lmstack.data.toolcalls import generate
from lmstack.evals.stats import paired_bootstrap
from lmstack.model.checkpoint import load_model_dir
from lmstack.train.grpo import GRPOConfig, grpo
from lmstack.train.toolcall_rewards import sampled_rewards, toolcall_accuracy, toolcall_prompts
from lmstack.train.sft import load_finetune_config


def constant_policy_rate(prompts) -> float:
    names = collections.Counter(p.target["call"]["name"] for p in prompts if "call" in p.target)
    return max(names.values()) / sum(names.values())


def measure(checkpoint: str, samples: list[dict], max_new_tokens: int):
    """The greedy score, the prompts, the seconds it took, and the loaded (model, tokenizer) for more scoring."""
    model, tokenizer, _ = load_model_dir(checkpoint)
    prompts = toolcall_prompts(samples, tokenizer, model.cfg.block_size - max_new_tokens)
    t0 = time.perf_counter()
    result = toolcall_accuracy(model, tokenizer, prompts, max_new_tokens)
    return result, prompts, time.perf_counter() - t0, (model, tokenizer)


def report_change(label: str, before: list[float], after: list[float], n_samples: int) -> dict:
    change = paired_bootstrap(before, after)
    mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
    print(f"  {label}: held-out mean reward {mean_before:.4f} -> {mean_after:.4f} over {len(before)} decision points "
          f"x {n_samples} sample(s); paired change {change.mean_diff:+.4f}, 95% CI [{change.ci_low:+.4f}, "
          f"{change.ci_high:+.4f}], p = {change.p_value:.3f}")
    return {"before": round(mean_before, 4), "after": round(mean_after, 4), "points": len(before),
            "samples_per_point": n_samples, "change_ci95": [round(change.ci_low, 4), round(change.ci_high, 4)],
            "p": round(change.p_value, 4)}


def run_grpo(checkpoint: str, steps: int, overrides: list[str], test_file: Path, seed: int,
             work: Path) -> tuple[str, GRPOConfig]:
    """A short GRPO run from `checkpoint` on generated train prompts, in `work`; returns its final dir and settings.

    4,000 conversations give ~8,000 decision points, so a run of the default size sees no prompt twice:
    on 500 conversations (two passes) the train reward rose while the held-out one did not move.
    """
    train_file = work / "train.jsonl"
    train_file.write_text("\n".join(json.dumps(s) for s in generate(4000, seed, "train")) + "\n")
    cfg = load_finetune_config(GRPOConfig, checkpoint, None, overrides, train_file=str(train_file),
                               val_file=str(test_file), run_dir=str(work / "run"), max_steps=steps, eval_every=steps,
                               checkpoint_every=steps)
    return str(grpo(cfg).final), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/quickstart/sft/final")
    parser.add_argument("--n", type=int, default=200, help="held-out conversations (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--grpo-steps", type=int, default=0, help="also run GRPO this many steps and report before/after")
    parser.add_argument("--samples", type=int, default=4,
                        help="with --grpo-steps: seeded samples per decision point for the sampled reward (default 4)")
    parser.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a GRPO setting, e.g. lr=1e-4, batch_size=64 or temperature=1.0 (repeatable)")
    args = parser.parse_args()
    require_positive(parser, args, "n")
    if not Path(args.checkpoint).is_dir():
        parser.error(f"no checkpoint at '{args.checkpoint}': run `make demo` (lmstack quickstart) first, "
                     "which writes the demo SFT model there, or pass --checkpoint DIR")

    samples = generate(args.n, args.seed, "test")
    result, prompts, seconds, before_model = measure(args.checkpoint, samples, args.max_new_tokens)
    peer = constant_policy_rate(prompts)
    print(f"{args.checkpoint}: {len(samples)} held-out conversations, {result['call_turns']} tool-calling turns, "
          f"{result['answer_turns']} answer turns, scored in {seconds:.0f}s")
    for key, value in result.items():
        if isinstance(value, list):  # the per-prompt rewards
            continue
        print(f"  {key:20s} {value:.3f}" if isinstance(value, float) else f"  {key:20s} {value}")
    figures = {"metric": "tool calls that parse and name the right tool (held-out synthetic split)",
               "ours": round(result["call_right_tool"], 4), "peer": round(peer, 4),
               "peer_is": "always calling the most frequent tool", "ratio": round(result["call_right_tool"] / peer, 3),
               "call_turns": result["call_turns"], "call_parsed": round(result["call_parsed"], 4),
               "call_right_args": round(result["call_right_args"], 4),
               "answer_correct": round(result["answer_correct"], 4), "mean_reward": round(result["mean_reward"], 4)}
    if args.grpo_steps:
        work = Path(tempfile.mkdtemp(prefix="grpo-bench-"))  # GRPO's data, run dir and checkpoints
        try:
            test_file = work / "test.jsonl"
            test_file.write_text("\n".join(json.dumps(s) for s in samples) + "\n")
            final, grpo_cfg = run_grpo(args.checkpoint, args.grpo_steps, args.grpo_set, test_file, args.seed, work)
            after, _, _, after_model = measure(final, samples, args.max_new_tokens)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"GRPO {args.grpo_steps} steps (lr {grpo_cfg.lr}, {grpo_cfg.batch_size} prompts a step, groups of "
              f"{grpo_cfg.group_size}, temperature {grpo_cfg.temperature}):")
        greedy = report_change("greedy", result["rewards"], after["rewards"], 1)
        # The same seeds before and after: common random numbers make the paired change less noisy.
        before_sampled, after_sampled = (sampled_rewards(*loaded, prompts, args.samples, grpo_cfg.temperature,
                                                         args.seed + 1, grpo_cfg.max_new_tokens)
                                         for loaded in (before_model, after_model))
        at_temperature = report_change(f"sampled at temperature {grpo_cfg.temperature}", before_sampled,
                                       after_sampled, args.samples)
        figures.update({"grpo_steps": args.grpo_steps, "grpo_lr": grpo_cfg.lr, "grpo_batch_size": grpo_cfg.batch_size,
                        "grpo_greedy_reward": greedy, "grpo_sampled_reward": at_temperature,
                        "right_args_after": round(after["call_right_args"], 4),
                        "answer_correct_after": round(after["answer_correct"], 4)})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
