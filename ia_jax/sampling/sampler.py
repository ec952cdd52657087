"""Batched generation with a KV cache, compiled once per (batch, prompt, length) bucket.

Self-report evaluation samples thousands of answers from many organisms, with and without the IA, so
requests are grouped into a few static shapes: the batch is padded to a batch bucket, prompts are
left-padded to a prompt bucket (so every row's next token lands in the same cache slot), and the
decode loop is a `lax.while_loop` that stops once every row has produced a stop token or its own
token limit. Temperature, top-p, top-k and the limits are traced values, not compile-time constants,
so changing them never recompiles.

Each row picks its organism (a slot of the stacked organism adapter, -1 for none) and whether the
introspection adapter is on; the IA is applied as a one-slot stacked adapter so one batch can mix
rows with and without it. Rows of one organism are laid out next to each other in equal groups
(`group_rows`), so a decode step reads each organism's weights once per group rather than once per row.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ia_jax.argmax import argmax
from ia_jax.lora.adapter import LoraAdapter
from ia_jax.models.decoder import CausalLM
from ia_jax.models.kv_cache import init_cache
from ia_jax.parallel import multihost
from ia_jax.training import preemption


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int = 0

    def __post_init__(self):
        problems = [f"{name}={getattr(self, name)!r} (need {need})" for name, ok, need in (
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),
        ) if not ok]
        if problems:
            raise ValueError(f"bad sampling params: {', '.join(problems)}")


def _one_slot(ia: LoraAdapter) -> LoraAdapter:
    """The IA as a one-slot stack, so each row switches it on (slot 0) or off (-1) within one batch."""
    if ia.stacked:
        raise ValueError("ia must be a shared adapter")
    return LoraAdapter(weights=jax.tree.map(lambda w: w[:, None], ia.weights), config=ia.config, num_slots=1)


def length_bucket(max_new_tokens: int) -> int:
    """Decode-length bucket: the next power of two (at least 16), so nearby lengths share a program."""
    return max(16, 1 << (max_new_tokens - 1).bit_length())


def _bucket(value: int, buckets: Sequence[int], what: str) -> int:
    position = bisect.bisect_left(buckets, value)
    if position == len(buckets):
        raise ValueError(f"{what} {value} exceeds the largest bucket {buckets[-1]}")
    return buckets[position]


def _powers_of_two(limit: int, start: int = 1) -> tuple[int, ...]:
    out, value = [], start
    while value < limit:
        out.append(value)
        value *= 2
    return tuple(out) + (limit,)


def _rows_by_organism(organism_ids: Sequence[int], batch: int) -> dict[int, list[int]]:
    ids = [int(i) for i in organism_ids]
    if len(ids) > batch:
        raise ValueError(f"{len(ids)} rows do not fit a batch of {batch}")
    rows_of: dict[int, list[int]] = {}
    for row, organism in enumerate(ids):
        rows_of.setdefault(organism, []).append(row)
    return rows_of


def _fits(rows_of: dict[int, list[int]], batch: int, group: int) -> bool:
    """Every organism's rows (rows without one count as an organism, -1), in whole groups, fit the batch."""
    if group < 1 or batch % group:
        return False
    return sum(-(-len(rows) // group) for rows in rows_of.values()) * group <= batch


def largest_group(organism_ids: Sequence[int], batch: int) -> int:
    """The largest power of two dividing `batch` whose groups fit the chunk's rows (`group_rows`); 1 always
    fits, and if a size fits so does every smaller power of two."""
    rows_of, group = _rows_by_organism(organism_ids, batch), batch & -batch
    while not _fits(rows_of, batch, group):
        group //= 2
    return group


def group_rows(organism_ids: Sequence[int], batch: int, group: int) -> tuple[list[int], list[int]]:
    """Where each row of a chunk goes in a batch of `batch` rows: rows of one organism next to each other,
    in groups of `group` rows that each run one organism. Returns `(order, slots_g)`: `order[p]` is the
    row at batch position p (-1: padding) and `slots_g[g]` the organism of group g (-1: none). A row's
    answer does not depend on where it sits in the batch."""
    rows_of = _rows_by_organism(organism_ids, batch)
    if not _fits(rows_of, batch, group):
        raise ValueError(f"rows of organisms {[int(i) for i in organism_ids]} do not fit a batch of {batch} "
                         f"in groups of {group}")
    order, slots = [], []
    for organism, rows in rows_of.items():
        for start in range(0, len(rows), group):
            members = rows[start:start + group]
            order.extend(members + [-1] * (group - len(members)))
            slots.append(organism)
    slots.extend([-1] * ((batch - len(order)) // group))
    order.extend([-1] * (batch - len(order)))
    return order, slots


def _filter_logits(logits_bv, temperature_b, top_p_b, top_k_b):
    """Temperature, then top-k, then top-p on the renormalised top-k distribution, as transformers'
    warpers do. Cuts are by rank, so tied logits at a cut are not all kept."""
    scaled_bv = logits_bv / jnp.maximum(temperature_b, 1e-6)[:, None]
    b, vocab = logits_bv.shape
    order_bv = jnp.argsort(-scaled_bv, axis=-1)
    sorted_bv = jnp.take_along_axis(scaled_bv, order_bv, axis=-1)
    rank_v = jnp.arange(vocab)
    k_b = jnp.where(top_k_b > 0, jnp.minimum(top_k_b, vocab), vocab)
    in_top_k_bv = rank_v[None, :] < k_b[:, None]
    probs_bv = jax.nn.softmax(jnp.where(in_top_k_bv, sorted_bv, -jnp.inf), axis=-1)
    mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv  # the top token always survives (top_p > 0)
    # top_p = 1 keeps everything, also the tail that float32 rounding puts at cumulative mass 1.0, so
    # such a row samples the same here as on the path that skips this function.
    keep_sorted_bv = in_top_k_bv & ((mass_before_bv < top_p_b[:, None]) | (top_p_b[:, None] >= 1))
    keep_bv = jnp.zeros_like(keep_sorted_bv).at[jnp.arange(b)[:, None], order_bv].set(keep_sorted_bv)
    return jnp.where(keep_bv, scaled_bv, -jnp.inf)


def _generate(model, base_layers, prompt_bt, prompt_mask_bt, organism_ids_b, group_slots_g, ia_ids_b, limits_b,
              temperature_b, top_p_b, top_k_b, seeds_b, stop_ids, organisms, ia, *, max_new_tokens: int,
              rows_per_group: int | None):
    b, t = prompt_bt.shape
    adapters = []
    if organisms is not None:
        # Each group's organism gathered once for the whole loop (`rows_per_group`), or each row's slot
        # gathered in every projection when the groups would outnumber the stack.
        adapters.append(organisms.per_group(group_slots_g, rows_per_group) if rows_per_group
                        else (organisms, organism_ids_b))
    if ia is not None:
        adapters.append((ia, ia_ids_b))
    cache = init_cache(model.config, b, t + max_new_tokens)
    # Prompts are left-padded: every row's next token is read at the last position, the only logits needed.
    logits_btv, cache = model(prompt_bt, attention_mask_bt=prompt_mask_bt, adapters=adapters, cache=cache,
                              logit_positions_bl=jnp.full((b, 1), t - 1, jnp.int32))
    layers = None
    if base_layers is not None:  # the decode steps read each layer's own weights and cache
        layers, cache = model.layer_slices(adapters, base_layers=base_layers), cache.per_layer()
    out_bn = jnp.zeros((b, max_new_tokens), jnp.int32)
    done_b = limits_b <= 0

    # One key per row from its own seed: an answer depends on its prompt and seed, not on its batch.
    row_keys_b = jax.vmap(jax.random.key)(seeds_b)

    sampling = jnp.any(temperature_b > 0)
    cutting = jnp.any((temperature_b > 0) & ((top_p_b < 1) | (top_k_b > 0)))

    def sample(logits_bv, step):
        # Top-k/top-p sort the vocabulary (per row, per step): skipped when no row asks for a cut.
        filtered_bv = jax.lax.cond(cutting, _filter_logits,
                                   lambda logits, t, p, k: logits / jnp.maximum(t, 1e-6)[:, None],
                                   logits_bv, temperature_b, top_p_b, top_k_b)
        step_keys_b = jax.vmap(lambda key: jax.random.fold_in(key, step))(row_keys_b)
        return jax.vmap(jax.random.categorical)(step_keys_b, filtered_bv).astype(jnp.int32)

    def choose(logits_bv, step):
        greedy_b = argmax(logits_bv)
        # Greedy batches (every evaluation answer) never pay for sampling.
        sampled_b = jax.lax.cond(sampling, sample, lambda logits, step: greedy_b, logits_bv, step)
        return jnp.where(temperature_b > 0, sampled_b, greedy_b)

    def cond(carry):
        step, _, _, done_b, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done_b)

    def body(carry):
        step, logits_bv, cache, done_b, out_bn = carry
        token_b = jnp.where(done_b, 0, choose(logits_bv, step))
        out_bn = jax.lax.dynamic_update_slice(out_bn, token_b[:, None], (0, step))
        live_b = ~done_b
        done_b = done_b | jnp.isin(token_b, stop_ids) | (step + 1 >= limits_b)
        logits_btv, cache = model(token_b[:, None], attention_mask_bt=live_b[:, None], adapters=adapters,
                                  cache=cache, layers=layers)
        return step + 1, logits_btv[:, -1], cache, done_b, out_bn

    steps, _, _, _, out_bn = jax.lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), logits_btv[:, -1], cache, done_b, out_bn))
    return out_bn, steps


class Sampler:
    """Generates token ids for many prompts; `organisms` is a stacked adapter, `ia` a shared one."""

    def __init__(self, model: CausalLM, *, organisms: LoraAdapter | None = None, ia: LoraAdapter | None = None,
                 stop_ids: Sequence[int] = (), pad_id: int = 0, batch_buckets: Sequence[int] | None = None,
                 prompt_buckets: Sequence[int] | None = None, max_batch: int = 64, max_prompt: int = 1024,
                 unroll_layers: bool | None = None):
        """`unroll_layers`: decode steps run the layers unrolled, on per-layer copies of the base's
        weights made once and kept (`CausalLM.base_layer_slices`), instead of scanning the stacked layers.

        The default is on for CPU only. XLA:CPU copies every stacked weight's layer slice at every
        step; unrolled, the benchmark's `generate` was 1.16x / 1.21x faster at batch 8 / 32 and no
        slower at batch 1 (the toy model's 1.45x), for about 0.5-9 s more compile per variant. The
        copies are kept between calls (a second copy of the layer weights) and remade when the model's
        weights have changed (`nnx.update` on the model, as an evaluation during training does); made
        in every call, they had cost each `generate` call about 0.2 s. Accelerators read the slices in
        place and would pay for the copy in memory and for the depth in compile time."""
        if organisms is not None and not organisms.stacked:
            raise ValueError("organisms must be a stacked adapter (one slot per organism)")
        self.model = model
        self.organisms = organisms
        self.ia = None if ia is None else _one_slot(ia)
        self.stop_ids = np.asarray(sorted(set(stop_ids)) or [-1], np.int32)
        self.pad_id = pad_id
        self.batch_buckets = tuple(batch_buckets or _powers_of_two(max_batch))
        self.prompt_buckets = tuple(prompt_buckets or _powers_of_two(max_prompt, start=16))
        self.unroll_layers = jax.default_backend() == "cpu" if unroll_layers is None else bool(unroll_layers)
        graphdef, state = nnx.split(model)
        self._state = state
        self._lay_out = jax.jit(lambda state: nnx.merge(graphdef, state).base_layer_slices())
        self._base_layers, self._laid_out_from = None, ()
        self._group_sizes: dict[tuple, set] = {}  # per (batch, prompt, length) bucket: sizes compiled
        self._jitted = jax.jit(
            lambda state, *args, max_new_tokens, rows_per_group: _generate(
                nnx.merge(graphdef, state), *args, max_new_tokens=max_new_tokens, rows_per_group=rows_per_group),
            static_argnames=("max_new_tokens", "rows_per_group"))

    def set_ia(self, ia: LoraAdapter) -> None:
        """Swaps in other IA weights of the same config and shapes (e.g. the IA as it trains), reusing
        every compiled program."""
        new = _one_slot(ia)
        if self.ia is None or new.config != self.ia.config or \
                jax.tree.map(np.shape, new.weights) != jax.tree.map(np.shape, self.ia.weights):
            raise ValueError("set_ia: the new IA must have the loaded IA's config and shapes")
        self.ia = new

    def _decode_layers(self):
        """The base's decode copies, remade only when a weight array is no longer the one they were made
        from: the sampler holds the model's variables, so an `nnx.update` of the model reaches it."""
        if not self.unroll_layers:
            return None
        leaves = jax.tree.leaves(self._state)
        if self._base_layers is None or len(leaves) != len(self._laid_out_from) or \
                any(now is not then for now, then in zip(leaves, self._laid_out_from)):
            self._base_layers, self._laid_out_from = self._lay_out(self._state), tuple(leaves)
        return self._base_layers

    def compiled_variants(self) -> int:
        return self._jitted._cache_size()

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
                 organism_ids: Sequence[int] | None = None, use_ia: Sequence[bool] | bool = False) -> list[list[int]]:
        """New tokens per prompt (stop token included when one ended the answer).

        `params` is one setting for all rows or one per row. Row i samples with seed
        `params[i].seed`: equal prompts with equal seeds give equal answers in any batch.
        """
        n = len(prompts)
        if n == 0:
            return []
        params = [params] * n if isinstance(params, SamplingParams) else list(params)
        if len(params) != n:
            raise ValueError(f"{len(params)} sampling params for {n} prompts")
        if organism_ids is not None and self.organisms is None:
            raise ValueError("organism_ids given, but the sampler has no organism adapters")
        organism_ids = np.full(n, -1, np.int32) if organism_ids is None else np.asarray(organism_ids, np.int32)
        if organism_ids.shape != (n,):
            raise ValueError(f"organism_ids has shape {organism_ids.shape}, expected ({n},)")
        if self.organisms is not None:
            bad = organism_ids[(organism_ids < -1) | (organism_ids >= self.organisms.num_slots)]
            if bad.size:
                raise ValueError(f"organism ids {sorted(set(bad.tolist()))} are outside the "
                                 f"{self.organisms.num_slots} loaded organisms")
        use_ia = np.broadcast_to(np.asarray(use_ia, bool), (n,))
        if use_ia.any() and self.ia is None:
            raise ValueError("use_ia requested, but the sampler has no introspection adapter")
        results: list[list[int]] = []
        largest = self.batch_buckets[-1]
        for start in range(0, n, largest):
            preemption.check()  # on a pod, SIGTERM stops every host here, at the same chunk
            chunk = slice(start, min(start + largest, n))
            results.extend(self._generate_chunk(prompts[chunk], params[chunk], organism_ids[chunk], use_ia[chunk]))
        return results

    def _group_size(self, shape: tuple, organism_ids, batch: int) -> int | None:
        """The rows per organism group for this chunk, or None: each row's slot gathered per step.

        Grouped only where the groups' gathered weights hold no more than the stack (memory). A
        compiled program is reused in preference to a better layout: each group size is a program of
        its own, and on the toy world's short answers the five sizes its evaluation met cost more to
        compile (about 6 s each) than they saved. So the largest fitting size is compiled only when no
        size already compiled for this shape fits."""
        if self.organisms is None:
            return None
        options = [g for g in _powers_of_two(largest_group(organism_ids, batch))
                   if batch // g <= self.organisms.num_slots][::-1] + [None]
        compiled = self._group_sizes.setdefault(shape, set())
        choice = next((option for option in options if option in compiled), options[0])
        compiled.add(choice)
        return choice

    def _generate_chunk(self, prompts, params: list[SamplingParams], organism_ids, use_ia):
        n = len(prompts)
        batch = _bucket(n, self.batch_buckets, "batch")
        width = _bucket(max(len(p) for p in prompts), self.prompt_buckets, "prompt length")
        max_new = length_bucket(max(p.max_new_tokens for p in params))
        group = self._group_size((batch, width, max_new), organism_ids, batch)
        order, slots = group_rows(organism_ids, batch, group or 1)
        position = {row: p for p, row in enumerate(order) if row >= 0}
        placed = [position[row] for row in range(n)]
        tokens = np.full((batch, width), self.pad_id, np.int32)
        mask = np.zeros((batch, width), np.int32)
        for row, prompt in enumerate(prompts):
            if len(prompt):
                tokens[placed[row], width - len(prompt):] = prompt
                mask[placed[row], width - len(prompt):] = 1
        def column(field, dtype, fill=0):
            values = np.full(batch, fill, dtype)
            values[placed] = [getattr(p, field) for p in params]
            return values

        limits = column("max_new_tokens", np.int32)
        organisms = np.full(batch, -1, np.int32)
        organisms[placed] = organism_ids
        ia_ids = np.full(batch, -1, np.int32)
        ia_ids[placed] = np.where(use_ia, 0, -1)
        out, _ = self._jitted(
            self._state, self._decode_layers(), tokens, mask, organisms,
            np.asarray(slots if group else [], np.int32), ia_ids, limits, column("temperature", np.float32),
            column("top_p", np.float32, 1.0), column("top_k", np.int32), column("seed", np.uint32), self.stop_ids,
            self.organisms, self.ia, max_new_tokens=max_new, rows_per_group=group)
        out = multihost.fetch(out)  # on a pod, rows may live on other hosts' devices
        stops = set(self.stop_ids.tolist())
        results = []
        for row in range(n):
            tokens_row = out[placed[row], : params[row].max_new_tokens].tolist()
            for i, token in enumerate(tokens_row):
                if token in stops:
                    tokens_row = tokens_row[: i + 1]
                    break
            results.append(tokens_row)
        return results
