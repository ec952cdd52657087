"""Model FLOPs of the benchmarked workloads, counted matmul by matmul from the config.

MFU divides these by the step time and the device's measured peak, so they count what the workload
needs, not what an implementation happens to execute: every projection, attention over the full
`seq x seq` square (what both implementations compute), LoRA products, and the LM head at the scored
(answer) positions only. A LoRA step differs from full fine-tuning: frozen weights need the gradient
of their input but not of themselves, so the usual `6 x params x tokens` would overstate the work.
Backward = input gradients of every matmul (as many FLOPs as the forward), the second operand's
gradient in attention (q k^T and p v take gradients on both sides), and weight gradients of the trained
adapter. Elementwise work (norms, softmax, RoPE) is not counted.
"""

from __future__ import annotations

from ia_jax.lora.adapter import LoraConfig, projection_shapes
from ia_jax.models.config import ModelConfig

_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def _size(shape) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


def projection_macs(config: ModelConfig) -> int:
    """Multiply-adds per token of one layer's projections."""
    return sum(_size(i) * _size(o) for i, o in (projection_shapes(config, t) for t in _TARGETS))


def lora_macs(config: ModelConfig, lora: LoraConfig) -> int:
    """Multiply-adds per token of one layer's LoRA products `(x a) b`."""
    return sum(lora.rank * (_size(i) + _size(o)) for i, o in (projection_shapes(config, t) for t in lora.targets))


def attention_macs(config: ModelConfig, seq: int) -> int:
    """Multiply-adds per query token of one layer's `q k^T` and `p v` over `seq` keys."""
    return 2 * seq * config.num_heads * config.head_dim


def forward_flops(config: ModelConfig, *, rows: int, seq: int, scored: int, adapters: tuple[LoraConfig, ...]) -> float:
    """One forward over `rows x seq` tokens with the LM head at `scored` positions per row."""
    per_token = projection_macs(config) + attention_macs(config, seq) + sum(lora_macs(config, a) for a in adapters)
    return 2.0 * (rows * seq * config.num_layers * per_token + rows * scored * config.hidden_size * config.vocab_size)


def lora_train_step_flops(config: ModelConfig, *, rows: int, seq: int, scored: int, frozen: tuple[LoraConfig, ...],
                          trained: LoraConfig) -> float:
    """Forward + backward of a step that trains one adapter on a frozen base (and frozen adapters)."""
    adapters = (*frozen, trained)
    forward = forward_flops(config, rows=rows, seq=seq, scored=scored, adapters=adapters)
    attention_second_operand = 2.0 * rows * seq * config.num_layers * attention_macs(config, seq)
    trained_weights = 2.0 * rows * seq * config.num_layers * lora_macs(config, trained)
    return 2 * forward + attention_second_operand + trained_weights
