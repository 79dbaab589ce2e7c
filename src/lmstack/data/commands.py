"""`lmstack prepare` and `lmstack tokenizer train|encode|info`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_prepare(subparsers)
    _register_tokenizer(subparsers)


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default="stdlib",
                        help="stdlib (default), a directory of text files, FILE.jsonl, FILE.parquet, or hf:NAME[:CONFIG]")
    parser.add_argument("--text-field", default="text", help="JSONL field / parquet column / dataset column with the text")
    parser.add_argument("--split", default="train", help="dataset split, for hf: sources")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N documents")


def _register_prepare(subparsers: argparse._SubParsersAction) -> None:
    from lmstack.data.prepare import DEFAULT_SHARD_TOKENS

    parser = subparsers.add_parser("prepare", help="tokenize a corpus into train/val token shards",
                                   description="Tokenize a corpus into OUT/train_*.bin, OUT/val_*.bin, OUT/meta.json and a copy of the tokenizer.")
    _add_source_arguments(parser)
    parser.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer.json, or a dir that has one")
    parser.add_argument("--out", required=True, metavar="DIR", help="output data dir (replaced as a whole)")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of documents for val (default 0.05)")
    parser.add_argument("--min-val-docs", type=int, default=2, help="at least this many val documents (default 2)")
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    parser.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from lmstack.data.prepare import empty_val_split, prepare
    from lmstack.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(args.tokenizer)
    result = prepare(args.source, args.out, tokenizer, val_fraction=args.val_fraction,
                     min_val_docs=args.min_val_docs, shard_tokens=args.shard_tokens, workers=args.workers,
                     text_field=args.text_field, split=args.split, limit=args.limit)
    print(f"wrote {result.out_dir}/")
    for name, stats in (("train", result.train), ("val", result.val)):
        print(f"  {name:5s} {stats.tokens:>14,} tokens  {stats.documents:>9,} documents  {len(stats.shards)} shard(s)")
    if not result.val.documents:
        print(f"warning: {empty_val_split(result.train.documents, args.val_fraction, args.min_val_docs)}",
              file=sys.stderr)
    return 0


def _register_tokenizer(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train, inspect and try byte-level BPE tokenizers")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="train a byte-level BPE tokenizer on a corpus")
    _add_source_arguments(train)
    train.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size incl. 256 bytes + special tokens")
    train.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen at least this often")
    train.add_argument("--out", required=True, metavar="DIR", help="writes DIR/tokenizer.json")
    train.set_defaults(func=run_train)

    encode = actions.add_parser("encode", help="print the token ids and pieces of a text")
    encode.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer.json, or a dir that has one")
    encode.add_argument("text", help="the text to encode; - reads standard input")
    encode.set_defaults(func=run_encode)

    info = actions.add_parser("info", help="print a tokenizer's vocab size and special tokens")
    info.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer.json, or a dir that has one")
    info.set_defaults(func=run_info)


def run_train(args: argparse.Namespace) -> int:
    from lmstack.atomic import check_output_dir, refuse_to_replace
    from lmstack.data.prepare import TOKENIZER_FILE
    from lmstack.data.sources import check_limit, document_count, iter_documents
    from lmstack.tokenizer import Tokenizer, TokenizerError

    check_limit(args.limit)
    out = Path(args.out)
    check_output_dir(out)  # before the training, which takes a while; created only by the save
    # Only a dir of its own (tokenizer.json alone) may have its tokenizer.json replaced: in a model or data dir the
    # new tokenizer would no longer match the weights or shards beside it.
    refuse_to_replace(out, TOKENIZER_FILE.__eq__, "tokenizer train", TokenizerError,
                      "its tokenizer.json is replaced")
    total = document_count(args.source)
    if args.limit is not None:
        total = min(total, args.limit) if total is not None else args.limit
    texts = (doc.text for doc in iter_documents(args.source, args.text_field, args.split, args.limit))
    tokenizer = Tokenizer.train(texts, args.vocab_size, total=total, min_frequency=args.min_frequency)
    tokenizer.save(out / TOKENIZER_FILE)
    print(f"wrote {out / TOKENIZER_FILE} (vocab size {tokenizer.vocab_size})")
    if tokenizer.vocab_size < args.vocab_size:
        print(f"note: the corpus had too few distinct pairs for {args.vocab_size} tokens; "
              f"the vocab stopped at {tokenizer.vocab_size} (use a bigger corpus or --min-frequency 1)")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from lmstack.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(args.tokenizer)
    text = sys.stdin.read() if args.text == "-" else args.text
    ids = tokenizer.encode(text)
    print(f"{len(ids)} tokens")
    print("ids:", " ".join(map(str, ids)))
    print("pieces:", " ".join(repr(tokenizer.token_bytes(i).decode("utf-8", "backslashreplace")) for i in ids))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from lmstack.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(args.tokenizer)
    print(f"vocab size: {tokenizer.vocab_size}")
    print(f"bos id: {tokenizer.bos_id}")
    print(f"chat tokens: {'yes' if tokenizer.has_chat_tokens else 'no'}")
    print("special tokens:")
    for token, token_id in sorted(tokenizer.special.items(), key=lambda item: item[1]):
        print(f"  {token_id:>6}  {token}")
    return 0
