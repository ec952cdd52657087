"""A fully fine-tuned Hugging Face checkpoint imported as an organism: a LoRA adapter over the base.

Organisms are slots of one stacked adapter over one copy of the base (the IA trains across all of them
in one job), so an organism published as a full checkpoint would otherwise cost a second model in
memory. Its difference from the base is what it learned: for every LoRA target and layer, the delta
`W_finetuned - W_base` is cut to its best rank-`rank` approximation by a truncated SVD, `delta ~= a @ b`
with the square roots of the singular values folded into each side and `alpha = rank` (scale 1), so
the adapter adds exactly the truncated delta. This is exact when `rank >= rank(delta)` (a merged LoRA
of rank r comes back exactly at rank r); below that, what is lost is the delta's tail of singular
values, reported per target as a relative Frobenius error.

What no LoRA can carry is any change outside the targeted kernels: embeddings, norms, the LM head,
biases (and the kernels of targets left out). Those are compared with the base and refused by name,
unless the caller accepts that the organism keeps the base's values there, in which case the report
lists them. Both checkpoints are read one tensor at a time from their memory maps, so the host never
holds either model whole; the SVD runs in float32 with numpy, one layer of one target at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Sequence

import numpy as np
from flax import nnx

from ia_jax.lora.adapter import TARGETS, LoraAdapter, LoraConfig, check_fits, projection_shapes
from ia_jax.models.config import ConfigError, ModelConfig, load_hf_config
from ia_jax.models.decoder import CausalLM
from ia_jax.models.hf_checkpoint import CheckpointError, check_against_config, CheckpointFiles, weight_layouts

_log = logging.getLogger(__name__)

# Config fields that change no weight's meaning: a fine-tune may set its own without being another model.
_NOT_ARCHITECTURE = ("bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings", "dtype",
                     "param_dtype")
_TARGET_OF_MODULE = {parts: target for target, parts in TARGETS.items()}
_BLOCK_ELEMENTS = 1 << 24  # untargeted tensors are compared in blocks of this many elements


class UntargetedChangeError(ValueError):
    """The fine-tune changed weights that no LoRA over the chosen targets can carry; names them."""


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What the import kept and what it lost.

    `relative_errors[target]`: max over layers of `|delta - a @ b|_F / |delta|_F` (0 where no delta).
    `untargeted_changes[hf_name]`: `max|tuned - base| / max|base|` of each changed tensor the adapter
    leaves at the base's values (empty unless `allow_untargeted_changes`).
    """

    relative_errors: dict[str, float]
    untargeted_changes: dict[str, float]


def _architecture(config: ModelConfig) -> dict:
    fields = dataclasses.asdict(config)
    flat = {k: v for k, v in fields.items() if k not in _NOT_ARCHITECTURE and k != "rope"}
    flat.update({f"rope.{k}": v for k, v in fields["rope"].items()})
    return flat


def check_same_architecture(config: ModelConfig, path: str, reference: str) -> None:
    expected, actual = _architecture(config), _architecture(load_hf_config(path))
    for field, value in expected.items():
        if actual[field] != value:
            raise ConfigError(f"{os.path.join(path, 'config.json')}: {field}={actual[field]!r}, but {reference} "
                              f"has {value!r}; only a fine-tune of the same architecture becomes a LoRA")


def _relative_change(base: np.ndarray, tuned: np.ndarray) -> float:
    """`max|tuned - base| / max|base|`, in row blocks so a large embedding is never copied whole."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, math.prod(base.shape[1:])))
    diff = scale = 0.0
    for start in range(0, base.shape[0], rows):
        base_block = np.asarray(base[start : start + rows], np.float32)
        block_diff = float(np.max(np.abs(np.asarray(tuned[start : start + rows], np.float32) - base_block)))
        if math.isnan(block_diff):
            return math.inf
        diff, scale = max(diff, block_diff), max(scale, float(np.max(np.abs(base_block))))
    if diff == 0.0:
        return 0.0
    return diff / scale if scale > 0.0 else math.inf


def _low_rank(delta_io: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(a `[in, rank]`, b `[rank, out]`, relative error): the best rank-`rank` `a @ b`, zero-padded."""
    u_ik, s_k, vt_ko = np.linalg.svd(delta_io, full_matrices=False)
    kept = min(rank, s_k.size)
    root_k = np.sqrt(s_k[:kept])
    a_ir = np.zeros((delta_io.shape[0], rank), np.float32)
    b_ro = np.zeros((rank, delta_io.shape[1]), np.float32)
    a_ir[:, :kept] = u_ik[:, :kept] * root_k
    b_ro[:kept] = root_k[:, None] * vt_ko[:kept]
    # Measured on the stored factors rather than from the singular values: it is what the adapter adds.
    norm = float(np.linalg.norm(delta_io))
    return a_ir, b_ro, float(np.linalg.norm(delta_io - a_ir @ b_ro)) / norm if norm > 0.0 else 0.0


def _delta(base_files, tuned_files, layout, layer: int, name: str) -> np.ndarray:
    """`W_tuned - W_base` of one layer in our kernel layout, as a float32 `[in..., out...]` array."""
    base = np.asarray(layout.from_hf(base_files.tensor(name)), np.float32)
    delta = np.asarray(layout.from_hf(tuned_files.tensor(name)), np.float32) - base
    if not np.all(np.isfinite(delta)):
        raise CheckpointError(f"{tuned_files.file_of(name).path}: tensor {name!r} has non-finite values")
    return delta


def extract_lora(base_path: str, finetuned_path: str, *, rank: int, targets: Sequence[str] = tuple(TARGETS),
                 model_config: ModelConfig | None = None, allow_untargeted_changes: bool = False,
                 tolerance: float = 1e-6) -> tuple[LoraAdapter, ImportReport]:
    """The rank-`rank` LoRA adapter (scale 1) that turns the base at `base_path` into `finetuned_path`.

    `model_config` is the base the adapter is for (default: `base_path`'s config.json); both checkpoints
    must match its architecture. An untargeted tensor counts as changed when its relative change (see
    `ImportReport`) exceeds `tolerance`, which forgives float32 round-off of a re-saved checkpoint.
    """
    lora_config = LoraConfig(rank=rank, alpha=float(rank), dropout=0.0, targets=tuple(targets))
    lora_config = dataclasses.replace(lora_config, targets=tuple(t for t in TARGETS if t in lora_config.targets))
    if model_config is None:
        model_config, reference = load_hf_config(base_path), os.path.join(base_path, "config.json")
    else:
        reference = "the given model_config"
        check_same_architecture(model_config, base_path, reference)
    check_same_architecture(model_config, finetuned_path, reference)

    _, state = nnx.split(nnx.eval_shape(lambda: CausalLM(model_config, rngs=nnx.Rngs(0))))
    layouts = [layout for _, _, layout in weight_layouts(state)]
    base_files, tuned_files = CheckpointFiles(base_path), CheckpointFiles(finetuned_path)
    check_against_config(base_files, layouts)
    check_against_config(tuned_files, layouts)
    kernel_of = {}
    for layout in layouts:
        target = _TARGET_OF_MODULE.get(layout.path[-3:-1]) if layout.kind == "kernel" else None
        if target in lora_config.targets:
            kernel_of[target] = layout

    # Untargeted tensors first: they are cheap to compare and refusing them spares the SVDs.
    untargeted = {}
    for layout in layouts:
        if layout in kernel_of.values():
            continue
        for _, name in layout.hf_names():
            change = _relative_change(base_files.tensor(name), tuned_files.tensor(name))
            if change > tolerance:
                untargeted[name] = change
    if untargeted and not allow_untargeted_changes:
        shown = ", ".join(f"{name!r} (relative change {change:.3g})" for name, change in list(untargeted.items())[:5])
        more = f" and {len(untargeted) - 5} more" if len(untargeted) > 5 else ""
        raise UntargetedChangeError(
            f"{finetuned_path}: changed tensors no LoRA over {list(lora_config.targets)} can carry: {shown}{more}; "
            f"pass allow_untargeted_changes=True to import it with the base's values there")

    weights, errors = {}, {}
    for target in lora_config.targets:
        in_shape, out_shape = projection_shapes(model_config, target)
        layout = kernel_of[target]
        a_layers, b_layers, errors[target] = [], [], 0.0
        for layer, name in layout.hf_names():
            delta_io = _delta(base_files, tuned_files, layout, layer, name).reshape(math.prod(in_shape), -1)
            a_ir, b_ro, error = _low_rank(delta_io, rank)
            a_layers.append(a_ir.reshape(*in_shape, rank))
            b_layers.append(b_ro.reshape(rank, *out_shape))
            errors[target] = max(errors[target], error)
        weights[target] = {"lora_a": np.stack(a_layers), "lora_b": np.stack(b_layers)}
        _log.info("%s: %s at rank %d, relative error %.3g", finetuned_path, target, rank, errors[target])
    adapter = LoraAdapter(weights=weights, config=lora_config)
    check_fits(adapter, model_config, finetuned_path)
    return adapter, ImportReport(relative_errors=errors, untargeted_changes=untargeted)
