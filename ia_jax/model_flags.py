"""Command-line flags shared by the entry points that load a model with adapters (serve, audit, export).

Defined once here: absl refuses a flag defined twice in one process, and both entry points are
imported together by tests and by tools built on them.
"""

from __future__ import annotations

import json

from absl import flags

MODEL = flags.DEFINE_string("model", None, "Hugging Face checkpoint directory (with its tokenizer).")
IA = flags.DEFINE_string("ia", None, "PEFT directory of the introspection adapter.")
DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Weight and compute dtype (default float32).")
ADAPTER = flags.DEFINE_string("adapter", None, "Organism on top of --model: a PEFT directory or a full checkpoint.")
ORGANISMS = flags.DEFINE_string("organisms", None, "Comma-separated NAME=DIR organisms: PEFT adapter directories, "
                                "or full fine-tuned checkpoints of --model (imported as rank --full_rank LoRAs).")
OUT = flags.DEFINE_string("out", None, "Output directory (audit: default ./audit; export: required).")
FULL_RANK = flags.DEFINE_integer("full_rank", 64, "LoRA rank a full fine-tuned organism checkpoint is cut to.")
TEMPLATE_KWARGS = flags.DEFINE_string(
    "chat_template_kwargs", None, 'JSON passed to the chat template, e.g. \'{"enable_thinking": false}\' for Qwen3.')


def template_kwargs() -> dict | None:
    return json.loads(TEMPLATE_KWARGS.value) if TEMPLATE_KWARGS.value else None
