"""`lmstack import`, `lmstack export`, `lmstack info`: move models in and out, and look inside one."""

from __future__ import annotations

import argparse
import json
import sys

DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import", help="convert a Hugging Face or nanoGPT model into a lmstack checkpoint dir",
        description="Import GPT2LMHeadModel, LlamaForCausalLM or Qwen3ForCausalLM weights (a local directory or "
                    "a hub id such as openai-community/gpt2), or a nanoGPT ckpt.pt.")
    p.add_argument("--from", dest="source_format", choices=["hf", "nanogpt"], required=True,
                   help="hf: a Hugging Face model dir or hub id; nanogpt: nanoGPT's ckpt.pt")
    p.add_argument("src", help="HF model dir or hub id; nanoGPT ckpt.pt or its out_dir")
    p.add_argument("out_dir", help="checkpoint dir to write: new, empty, or an earlier import or export, which is "
                                   "replaced atomically")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="weights dtype (auto: as in the source)")
    p.add_argument("--tokenizer", metavar="TOKENIZER_JSON",
                   help="tokenizer.json to store with the model (default: the HF dir's own; nanoGPT has none)")
    p.set_defaults(func=run_import)

    p = subparsers.add_parser(
        "export", help="write a checkpoint dir in Hugging Face format (transformers, vLLM, llama.cpp)",
        description="Write config.json + model.safetensors + tokenizer files that transformers' "
                    "AutoModelForCausalLM / AutoTokenizer, vLLM and llama.cpp's convert_hf_to_gguf.py load.")
    p.add_argument("--format", dest="target_format", choices=["hf"], default="hf")
    p.add_argument("ckpt", help="lmstack checkpoint dir")
    p.add_argument("out_dir", help="directory to write: new, empty, or an earlier import or export, which is replaced "
                                   "atomically")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="weights dtype (auto: as in the checkpoint)")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser("info", help="show a checkpoint's shape, parameter count, dtype and files")
    p.add_argument("ckpt", help="lmstack checkpoint dir")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run_info)


def run_import(args: argparse.Namespace) -> int:
    if args.source_format == "hf":
        from lmstack.model.convert_hf import import_hf as convert
    else:
        from lmstack.model.convert_nanogpt import import_nanogpt as convert
    out = convert(args.src, args.out_dir, dtype=args.dtype, tokenizer=args.tokenizer)
    note = "" if (out / "tokenizer.json").is_file() else " (no tokenizer.json: add one with --tokenizer FILE)"
    print(f"imported {args.src} -> {out}{note}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from lmstack.model.convert_hf import export_hf

    out = export_hf(args.ckpt, args.out_dir, dtype=args.dtype)
    print(f"exported {args.ckpt} -> {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    if not (out / "tokenizer.json").is_file():
        print(f"warning: '{args.ckpt}' has no tokenizer.json, so '{out}' has none: transformers' AutoTokenizer "
              f"cannot load it (vLLM needs --tokenizer); copy the tokenizer.json the model was trained with into "
              f"'{args.ckpt}' and export again", file=sys.stderr)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from lmstack.model.info import checkpoint_summary, format_summary

    summary = checkpoint_summary(args.ckpt)
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0
