"""Organisms and IAs out to the Hugging Face ecosystem: merged checkpoints, PEFT adapters, a vLLM layout.

    python -m ia_jax.export --format=merged --model=BASE [--adapter=ORGANISM] [--ia=IA] --out=DIR [--dtype=bfloat16]
    python -m ia_jax.export --format=peft   --model=BASE [--adapter=ORGANISM] [--ia=IA] --out=DIR
    python -m ia_jax.export --format=vllm   --model=BASE [--organisms=NAME=DIR,...] [--ia=IA] --out=DIR [--copy_base]

`merged`: one `save_hf` checkpoint with the organism and/or the IA folded into the base (and the base's
tokenizer), for anything that reads a plain Hugging Face model. `peft`: one PEFT LoRA directory, the
organism, the IA, or both as ONE adapter. `vllm`: the base plus every adapter a server needs, named as
`python -m ia_jax.serve` names its models (`base`, `base+ia`, `NAME`, `NAME+ia`), with `serve_vllm.sh`.

Why both at once must be one adapter: peft and vLLM apply a single LoRA per request. LoRA deltas add,
so organism + IA is exactly the LoRA whose rank is the sum of theirs: `A = [A_org | A_ia]` along the
rank and `B = [B_org * s_org ; B_ia * s_ia]` with scale 1 (alpha = rank), a target only one of them
adapts getting a zero block from the other; `x A B = s_org x A_org B_org + s_ia x A_ia B_ia`. No
approximation (no SVD), so the combined rank is the sum of the two ranks.

An organism (`--adapter`, `--organisms`) is a PEFT directory or a full fine-tuned checkpoint of the base.
Merged, a full checkpoint is taken as it is (exact); as an adapter it becomes its rank-`--full_rank`
LoRA (`ia_jax.organisms.import_full`), as everywhere else in ia-jax.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
from absl import app, flags

from ia_jax import model_flags, tokenization
from ia_jax.lora.adapter import LoraAdapter, LoraConfig
from ia_jax.lora.merge import merge
from ia_jax.lora.peft_io import CONFIG_FILE, load_peft, save_peft, stack_adapters
from ia_jax.models.config import ModelConfig, load_hf_config
from ia_jax.models.hf_checkpoint import load_hf, save_hf
from ia_jax.organisms.import_full import check_same_architecture
from ia_jax.organisms.sources import load_organism
from ia_jax.serve import IA_SUFFIX, parse_organisms
from ia_jax.storage import gcs
from ia_jax.storage.gcs import is_gcs

_log = logging.getLogger(__name__)

FORMATS = ("merged", "peft", "vllm")
# The values vLLM accepts for --max-lora-rank; an adapter of any rank up to it loads.
VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
VLLM_MANIFEST = "lora_modules.json"
VLLM_SCRIPT = "serve_vllm.sh"
BASE_NAME = "base"  # the served name of the base, as in ia_jax.serve
IA_DIR = "ia"  # adapters/ia: the IA alone, served on the base as base+ia
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # safe as a directory, a shell word and a model name
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _is_full_checkpoint(path: str) -> bool:
    return not os.path.exists(os.path.join(path, CONFIG_FILE)) and os.path.exists(os.path.join(path, "config.json"))


def _same_place(a: str, b: str) -> bool:
    return not is_gcs(a) and not is_gcs(b) and os.path.realpath(a) == os.path.realpath(b)


def _base_tokenizer(base_dir: str):
    """The base's tokenizer, or None (with a warning) where the base has none."""
    if is_gcs(base_dir):  # the tokenizer's small files come down to the local cache; the weights never do
        try:
            return tokenization.load_tokenizer(base_dir)
        except (ValueError, OSError) as e:
            _log.warning("%s: no usable tokenizer (%s); the export carries none", base_dir, e)
            return None
    if not any(os.path.exists(os.path.join(base_dir, f)) for f in _TOKENIZER_FILES):
        _log.warning("%s: no tokenizer files; the export carries none", base_dir)
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)


def combine_adapters(adapters: Sequence[LoraAdapter], model_config: ModelConfig) -> LoraAdapter:
    """One LoRA exactly equal to the sum of `adapters` (e.g. [organism, ia]): their ranks concatenated.

    `stack_adapters` already folds each adapter's alpha/r into its lora_b and zero-fills targets an
    adapter lacks; its slots, cut back to each adapter's own rank, are laid side by side along the rank.
    The result has rank sum(ranks) and scale 1.
    """
    stacked = stack_adapters(adapters, model_config)
    ranks = [a.config.rank for a in adapters]
    weights = {
        target: {
            "lora_a": np.concatenate([pair["lora_a"][:, slot, ..., :r] for slot, r in enumerate(ranks)], axis=-1),
            "lora_b": np.concatenate([pair["lora_b"][:, slot, :r] for slot, r in enumerate(ranks)], axis=1),
        }
        for target, pair in stacked.weights.items()
    }
    rank = sum(ranks)
    return LoraAdapter(weights=weights, config=LoraConfig(rank=rank, alpha=float(rank), dropout=0.0,
                                                          targets=stacked.config.targets))


def export_merged(base_dir: str, out_dir: str, *, organism: str | None = None, ia: str | None = None,
                  dtype: str | None = None) -> None:
    """Writes the base with `organism` and/or `ia` folded in as a Hugging Face checkpoint at `out_dir`.

    `organism` is a PEFT directory (merged into the base) or a full fine-tuned checkpoint of the base
    (taken as is, architecture checked against the base); `ia` a PEFT directory. `dtype` ('float32' or
    'bfloat16', default float32) is the dtype written. The base's tokenizer and generation_config.json
    go along.
    """
    if organism is None and ia is None:
        raise ValueError(f"export_merged({base_dir}): give an organism and/or an IA to fold into the base; "
                         "with neither the export would be the base itself")
    for source in (base_dir, organism, ia):
        if source is not None and _same_place(source, out_dir):
            raise ValueError(f"{out_dir}: the output directory is an input ({source}); choose another --out")
    adapters = []
    if organism is not None and _is_full_checkpoint(organism):
        if ia is None:
            raise ValueError(f"{organism}: already a full checkpoint; with no IA there is nothing to fold into it")
        check_same_architecture(load_hf_config(base_dir), organism, os.path.join(base_dir, "config.json"))
        model = load_hf(organism, dtype=dtype, param_dtype=dtype)  # its own weights: exact, no LoRA cut
    else:
        model = load_hf(base_dir, dtype=dtype, param_dtype=dtype)
        if organism is not None:
            adapters.append(load_organism(organism, model.config, base_path=base_dir))
    if ia is not None:
        adapters.append(load_peft(ia, model.config))
    # One merge of their sum: a bfloat16 weight is rounded once, not once per adapter.
    model = merge(model, adapters[0] if len(adapters) == 1 else combine_adapters(adapters, model.config))
    save_hf(model, out_dir, tokenizer=_base_tokenizer(base_dir))
    generation_config = os.path.join(base_dir, "generation_config.json")
    if not is_gcs(base_dir) and not is_gcs(out_dir) and os.path.exists(generation_config):
        shutil.copy(generation_config, out_dir)


def export_peft(base_dir: str, out_dir: str, *, organism: str | None = None, ia: str | None = None,
                full_rank: int = 64) -> LoraAdapter:
    """Writes one PEFT LoRA directory: the organism, the IA, or both combined (`combine_adapters`).

    A full fine-tuned organism becomes its rank-`full_rank` LoRA. Returns the adapter written.
    """
    if organism is None and ia is None:
        raise ValueError(f"export_peft({base_dir}): give an organism and/or an IA to export")
    config = load_hf_config(base_dir)
    adapters = []
    if organism is not None:
        adapters.append(load_organism(organism, config, base_path=base_dir, full_rank=full_rank))
    if ia is not None:
        adapters.append(load_peft(ia, config))
    adapter = adapters[0] if len(adapters) == 1 else combine_adapters(adapters, config)
    base_name = base_dir if is_gcs(base_dir) else os.path.abspath(base_dir)
    if is_gcs(out_dir):  # a PEFT folder is two small files: written locally, then uploaded
        with tempfile.TemporaryDirectory() as local:
            save_peft(adapter, local, base_model_name_or_path=base_name)
            gcs.upload_dir(local, out_dir)
    else:
        save_peft(adapter, out_dir, base_model_name_or_path=base_name)
    return adapter


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest value vLLM's --max-lora-rank accepts that serves an adapter of `rank`."""
    for value in VLLM_MAX_LORA_RANKS:
        if rank <= value:
            return value
    raise ValueError(f"LoRA rank {rank} is above the largest --max-lora-rank vLLM accepts "
                     f"({VLLM_MAX_LORA_RANKS[-1]}); use a smaller --full_rank or lower-rank adapters")


def _place_base(base_dir: str, destination: str, copy: bool) -> None:
    source = os.path.realpath(base_dir)  # resolved first: base_dir may be the link about to be replaced
    if os.path.islink(destination):
        os.remove(destination)
    elif _same_place(source, destination):
        return  # re-exporting from the layout's own copy of the base
    elif os.path.exists(destination):
        raise ValueError(f"{destination}: already exists and is not a link to the base; remove it or choose "
                         "another --out")
    if copy:
        shutil.copytree(source, destination)  # links inside the base (e.g. a hub cache's) are followed
    else:
        os.symlink(source, destination, target_is_directory=True)


def _serve_script(manifest: dict) -> str:
    modules = " ".join(f'"{m["name"]}=$here/{m["path"]}"' for m in manifest["lora_modules"])
    return (
        "#!/bin/sh\n"
        "# Written by python -m ia_jax.export --format=vllm: the base and its LoRA adapters in one vLLM server,\n"
        "# with the model names python -m ia_jax.serve uses. Extra arguments go to vllm (e.g. --max-loras 4).\n"
        'here="$(cd "$(dirname "$0")" && pwd -P)"\n'
        f'exec vllm serve "$here/{manifest["base"]}" --served-model-name {manifest["served_model_name"]} '
        f'--enable-lora --max-lora-rank {manifest["max_lora_rank"]} \\\n'
        f'  --lora-modules {modules} "$@"\n'
    )


def export_vllm_layout(base_dir: str, organisms: Mapping[str, str], ia_dir: str | None, out_dir: str, *,
                       full_rank: int = 64, copy_base: bool = False) -> dict:
    """Writes a vLLM multi-LoRA layout at `out_dir` and returns its manifest (also in `lora_modules.json`).

        out_dir/base                the base: a symlink to `base_dir`, or a copy with `copy_base`
        out_dir/adapters/NAME       each organism as a PEFT LoRA (full checkpoints at rank `full_rank`)
        out_dir/adapters/NAME+ia    each organism and the IA as one LoRA (`combine_adapters`)
        out_dir/adapters/ia         the IA alone, served on the base as `base+ia`
        out_dir/lora_modules.json   names, paths (relative to out_dir), ranks, --max-lora-rank
        out_dir/serve_vllm.sh       `vllm serve base --enable-lora --max-lora-rank R --lora-modules ...`

    Adapters keep their own rank: vLLM loads any rank up to --max-lora-rank, which is set to the
    smallest value it accepts that covers the largest adapter.
    """
    if not organisms and ia_dir is None:
        raise ValueError(f"export_vllm_layout({base_dir}): give organisms and/or an IA to serve on the base")
    for name in organisms:
        if not _NAME.match(name) or name in (BASE_NAME, IA_DIR):
            raise ValueError(f"organism name {name!r}: use letters, digits, '.', '_', '-' (not starting with "
                             f"'.', '_' or '-'), and not {BASE_NAME!r} or {IA_DIR!r}")
    config = load_hf_config(base_dir)
    # Everything is read before anything is written: a source may live inside out_dir (a re-export).
    ia = load_peft(ia_dir, config) if ia_dir is not None else None
    adapters: dict[str, tuple[str, LoraAdapter]] = {}  # served name -> (directory under out_dir, adapter)
    for name, path in organisms.items():
        organism = load_organism(path, config, base_path=base_dir, full_rank=full_rank)
        adapters[name] = (f"adapters/{name}", organism)
        if ia is not None:
            adapters[name + IA_SUFFIX] = (f"adapters/{name}{IA_SUFFIX}", combine_adapters([organism, ia], config))
    if ia is not None:
        adapters[BASE_NAME + IA_SUFFIX] = (f"adapters/{IA_DIR}", ia)
    largest = max(adapters, key=lambda name: adapters[name][1].config.rank)
    try:
        max_lora_rank = vllm_max_lora_rank(adapters[largest][1].config.rank)
    except ValueError as e:
        raise ValueError(f"adapter {largest!r}: {e}") from None

    os.makedirs(out_dir, exist_ok=True)
    _place_base(base_dir, os.path.join(out_dir, BASE_NAME), copy_base)
    base_path = os.path.abspath(os.path.join(out_dir, BASE_NAME))
    for directory, adapter in adapters.values():
        save_peft(adapter, os.path.join(out_dir, directory), base_model_name_or_path=base_path)
    manifest = {
        "base": BASE_NAME,
        "base_source": os.path.realpath(base_dir),
        "served_model_name": BASE_NAME,
        "max_lora_rank": max_lora_rank,
        # In the form vLLM's --lora-modules takes as JSON, with `path` relative to this folder.
        "lora_modules": [{"name": name, "path": directory, "base_model_name": BASE_NAME, "rank": adapter.config.rank}
                         for name, (directory, adapter) in adapters.items()],
    }
    with open(os.path.join(out_dir, VLLM_MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    script = os.path.join(out_dir, VLLM_SCRIPT)
    with open(script, "w", encoding="utf-8") as f:
        f.write(_serve_script(manifest))
    os.chmod(script, os.stat(script).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return manifest


_FORMAT = flags.DEFINE_enum("format", None, list(FORMATS), "What to export: merged (a Hugging Face checkpoint), "
                            "peft (one LoRA directory) or vllm (base + adapters + serve_vllm.sh).")
_COPY_BASE = flags.DEFINE_bool("copy_base", False, "--format=vllm: copy the base into OUT/base instead of linking it.")
for _shared in ("model", "adapter", "organisms", "ia", "out", "dtype", "full_rank"):
    flags.declare_key_flag(_shared)  # listed in this command's --help


def _check_exists(flag: str, path: str | None) -> None:
    if path and not is_gcs(path) and not os.path.exists(path):
        raise app.UsageError(f"--{flag}: {path} does not exist")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not model_flags.MODEL.value:
        raise app.UsageError("--model is required (the base checkpoint)")
    if not _FORMAT.value:
        raise app.UsageError(f"--format is required: one of {', '.join(FORMATS)}")
    if not model_flags.OUT.value:
        raise app.UsageError("--out is required (the directory to write)")
    out, adapter, ia = model_flags.OUT.value, model_flags.ADAPTER.value, model_flags.IA.value
    try:
        organisms = parse_organisms(model_flags.ORGANISMS.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    _check_exists("model", model_flags.MODEL.value)
    _check_exists("adapter", adapter)
    _check_exists("ia", ia)
    for name, path in organisms.items():
        _check_exists(f"organisms ({name})", path)
    if _FORMAT.value == "vllm":
        if adapter:
            raise app.UsageError("--format=vllm takes its organisms as --organisms=NAME=DIR,..., not --adapter")
    elif organisms:
        raise app.UsageError(f"--organisms is for --format=vllm; --format={_FORMAT.value} takes one --adapter")
    try:
        if _FORMAT.value == "merged":
            export_merged(model_flags.MODEL.value, out, organism=adapter, ia=ia, dtype=model_flags.DTYPE.value)
        elif _FORMAT.value == "peft":
            export_peft(model_flags.MODEL.value, out, organism=adapter, ia=ia, full_rank=model_flags.FULL_RANK.value)
        else:
            manifest = export_vllm_layout(model_flags.MODEL.value, organisms, ia, out,
                                          full_rank=model_flags.FULL_RANK.value, copy_base=_COPY_BASE.value)
            print(f"serve with: {os.path.join(out, VLLM_SCRIPT)} (--max-lora-rank {manifest['max_lora_rank']}; "
                  f"models: {BASE_NAME}, {', '.join(m['name'] for m in manifest['lora_modules'])})")
    except (ValueError, OSError) as e:
        raise app.UsageError(str(e)) from e
    print(f"wrote {out} ({_FORMAT.value})")


if __name__ == "__main__":
    app.run(main)
