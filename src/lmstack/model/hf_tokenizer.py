"""The tokenizer side of a Hugging Face export: tokenizer.json plus the files `AutoTokenizer` and
vLLM read next to it (tokenizer_config.json with our chat template, special_tokens_map.json,
generation_config.json with our stop tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

from lmstack.model.checkpoint import TOKENIZER_FILE
from lmstack.tokenizer import END, PAD, SPECIAL_TOKENS, Tokenizer

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# All that write_tokenizer_files writes (an export's output dir holds these and the model's two files).
HF_TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE, GENERATION_CONFIG_FILE)

# `Tokenizer.render` as Jinja, for `apply_chat_template` in transformers and vLLM. It must render the
# same ids as `render` (tests/model/test_export_tokenizer.py checks it), so change the two together.
CHAT_TEMPLATE = """\
{%- macro text(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content -%}{%- for part in content -%}{%- if part.type == 'text' -%}{{ part.text }}{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- set role_tokens = {'system': '<|system|>', 'developer': '<|system|>', 'user': '<|user|>', 'assistant': '<|assistant|>', 'tool': '<|tool|>'} -%}
{%- set ns = namespace(tool_text='', merged=false) -%}
{%- if tools -%}
{%- set ns.tool_text = '# Tools' -%}
{%- for tool in tools -%}
{%- set fn = tool.function if tool.function is defined else tool -%}
{%- set parameters = fn.parameters if fn.parameters is defined else {'type': 'object', 'properties': {}} -%}
{%- if fn.description -%}{%- set schema = {'name': fn.name, 'description': fn.description, 'parameters': parameters} -%}
{%- else -%}{%- set schema = {'name': fn.name, 'parameters': parameters} -%}{%- endif -%}
{%- set ns.tool_text = ns.tool_text + '\\n' + (schema | tojson) -%}
{%- endfor -%}
{%- endif -%}
{{- bos_token -}}
{%- if ns.tool_text and (not messages or messages[0].role != 'system') -%}
{{- '<|system|>' + ns.tool_text + '<|end|>' -}}
{%- endif -%}
{%- for message in messages -%}
{{- role_tokens[message.role] -}}
{%- if loop.first and ns.tool_text and message.role == 'system' -%}
{{- text(message.content) + '\\n\\n' + ns.tool_text -}}
{%- else -%}{{- text(message.content) -}}{%- endif -%}
{%- if message.role == 'assistant' and message.tool_calls -%}
{%- for call in message.tool_calls -%}
{%- set fn = call.function if call.function is defined else call -%}
{%- set arguments = fn.arguments if fn.arguments is defined else {} -%}
{%- if arguments is string -%}{%- set arguments_json = arguments if arguments | trim else '{}' -%}
{%- else -%}{%- set arguments_json = arguments | tojson -%}{%- endif -%}
{{- '<|tool_call|>{"name": ' + (fn.name | tojson) + ', "arguments": ' + arguments_json + '}<|/tool_call|>' -}}
{%- endfor -%}
{%- endif -%}
{{- '<|end|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}
"""


def write_tokenizer_files(directory: Path, tokenizer: Tokenizer, max_length: int) -> dict[str, int | None]:
    """Write the tokenizer files into `directory`; return the bos / eos / pad ids for config.json."""
    tokenizer.hf.save(str(directory / TOKENIZER_FILE))
    bos = tokenizer.hf.id_to_token(tokenizer.bos_id) if tokenizer.bos_id is not None else None
    # Chat models end a turn with <|end|>; a plain (imported) tokenizer ends documents with its bos.
    eos = END if END in tokenizer.special else bos
    pad = PAD if PAD in tokenizer.special else None
    special = {"bos_token": bos, "eos_token": eos, "pad_token": pad}
    special = {k: v for k, v in special.items() if v is not None}
    extra = [t for t in SPECIAL_TOKENS if t in tokenizer.special and t not in special.values()]
    special_map = {**special, "additional_special_tokens": extra}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", **special_map, "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,  # decode must give back exactly the text that was encoded
        "add_bos_token": False, "add_eos_token": False,
    }
    if tokenizer.has_chat_tokens:
        tokenizer_config["chat_template"] = CHAT_TEMPLATE
    (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (directory / SPECIAL_TOKENS_FILE).write_text(json.dumps(special_map, indent=2) + "\n")
    ids = {name: tokenizer.hf.token_to_id(token) if token else None for name, token in
           (("bos", bos), ("eos", eos), ("pad", pad))}
    generation = {"bos_token_id": ids["bos"], "eos_token_id": tokenizer.stop_ids or ids["eos"],
                  "pad_token_id": ids["pad"]}
    (directory / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    return ids
