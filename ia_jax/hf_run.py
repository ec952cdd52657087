"""The method on a Hugging Face base (Qwen3, Llama 3.3): organisms, IA SFT and DPO, evaluation.

`python -m ia_jax.main --config=configs/qwen3_0p6b.py --workdir=gs://bucket/run` on every worker of a
TPU slice (`launch/tpu_run.sh` does that). The base is read from a local or `gs://` checkpoint straight
onto the mesh; the base itself, under each behavior's system prompt, is the teacher (behaviors that
name a program use it instead); an OpenAI-compatible endpoint (`config.judge.url`) or a local
checkpoint (`config.judge.checkpoint`) judges. From there the stages are `ia_jax.pipeline.run_method`,
exactly what the toy run executes.

`validate` checks a config against a device count without touching weights: the mesh, the batch and
head layouts, sequence lengths and an estimate of each training stage's memory per device. It runs
before anything is loaded, and the shipped configs are checked by the tests with it.
"""

from __future__ import annotations

import contextlib
import math
import os

import jax
from ml_collections import ConfigDict

from ia_jax import models, tokenization
from ia_jax.behaviors import CATEGORIES
from ia_jax.behaviors.library import load_library
from ia_jax.datasets.teacher import ADHERENCE_PROMPT, DISCLOSURE_PROMPT, SamplerTeacher, TeacherJudge
from ia_jax.evaluation.judges import JUDGE_PROMPT, HttpJudge, ModelJudge
from ia_jax.evaluation.reports import SCHEMA_VERSION, write_report
from ia_jax.parallel import distributed, multihost
from ia_jax.parallel.sharding import MESH_AXES, make_mesh
from ia_jax.pipeline import StageClock, method_recipes, run_method, subset
from ia_jax.sampling.chat import ChatSampler
from ia_jax.sampling.sampler import Sampler, SamplingParams
from ia_jax.storage import gcs
from ia_jax.storage.workdir import Mirror
from ia_jax.training import preemption

_ARCHITECTURE = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings")
_STAGES = ("organisms", "ia_sft", "ia_dpo")
_BYTES = {"float32": 4, "bfloat16": 2}
_HEADROOM = 0.9  # of HBM a plan may use: XLA needs scratch space of its own


class RunConfigError(ValueError):
    """A run config that cannot work on the given devices; the message names the field."""


def default_config() -> ConfigDict:
    """Every field a run on a Hugging Face base reads; `configs/<model>.py` files set the model's."""
    c = ConfigDict()
    c.name = "hf"
    c.seed = 0
    c.log_every = 10
    # The checkpoint (local or gs://, config.json + safetensors + tokenizer) and its numerics.
    c.base = dict(checkpoint="", dtype="bfloat16", param_dtype="bfloat16", chat_template_kwargs={})
    # What the checkpoint must be: checked without weights by `validate`, and against config.json at load.
    c.architecture = {field: 0 for field in _ARCHITECTURE} | {"model_type": "", "tie_word_embeddings": False}
    # The slice the recipe is sized for: JAX devices (chips), devices per host, HBM per device.
    c.hardware = dict(accelerator="", devices=1, devices_per_host=4, hbm_gib=16.0)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.library = dict(path="", prompts="")  # empty: the shipped 80-behavior library and prompt pools
    c.teacher = dict(temperature=0.7, top_p=0.95, max_new_tokens=512, batch_size=64, prompt_buckets=(256, 512))
    c.judge = dict(url="", model="", max_concurrency=16, checkpoint="", batch_size=16)
    c.organisms = dict(per_split={"train": 8, "heldout": 2}, prompts_per_behavior=256, min_keep_rate=0.3,
                       lora=dict(rank=16, alpha=32.0, dropout=0.05), learning_rate=1e-4, warmup_steps=10,
                       weight_decay=0.0, epochs=2, batch_size=32, micro_batches=1, buckets=(512, 1024),
                       checkpoint_every=100, remat="projections")
    c.introspection = dict(examples_per_organism=64, base_examples=256, dpo_fraction=0.5)
    c.ia_sft = dict(lora=dict(rank=16, alpha=32.0, dropout=0.05), learning_rate=1e-4, warmup_steps=10,
                    weight_decay=0.0, epochs=2, batch_size=32, micro_batches=1, buckets=(128, 256),
                    checkpoint_every=100, remat="projections")
    c.ia_dpo = dict(learning_rate=5e-6, warmup_steps=5, epochs=1, batch_size=16, micro_batches=1, buckets=(256, 512),
                    samples_per_question=4, beta=0.1, checkpoint_every=50, temperature=1.0, remat="projections")
    c.eval = dict(samples=4, temperature=1.0, scaffold_temperature=1.0, scaffold_reports=100, max_new_tokens=256,
                  batch_size=64, prompt_buckets=(128, 256))
    return c


def _fail(field: str, message: str):
    raise RunConfigError(f"config.{field}: {message}")


def mesh_sizes(config: ConfigDict, devices: int) -> dict[str, int]:
    """The mesh's axis sizes on `devices` devices (one axis may be -1: the rest)."""
    sizes = {axis: int(config.mesh[axis]) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        _fail("mesh", f"{sizes}: sizes must be positive, with at most one -1")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if devices % fixed:
            _fail(f"mesh.{free[0]}", f"-1 cannot fill {devices} devices: the other axes ({fixed}) do not divide it")
        sizes[free[0]] = devices // fixed
    if math.prod(sizes.values()) != devices:
        _fail("mesh", f"{sizes} covers {math.prod(sizes.values())} devices, but there are {devices}")
    return sizes


def parameter_counts(arch: ConfigDict, rank: int) -> tuple[int, int]:
    """(base parameters, parameters of one rank-`rank` LoRA on q, k, v, o, gate, up, down)."""
    d, f, layers = arch.hidden_size, arch.intermediate_size, arch.num_layers
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
    base = arch.vocab_size * d * (1 if arch.tie_word_embeddings else 2) + layers * per_layer + d
    lora = layers * rank * ((d + q) + 2 * (d + kv) + (q + d) + 3 * (d + f))
    return base, lora


def memory_estimate_gib(config: ConfigDict, stage: str, sizes: dict[str, int], organisms: int) -> float:
    """Bytes per device of one training stage, in GiB: an estimate, within tens of percent.

    Weights divide over fsdp x tensor (every kernel has one axis on each). Trained LoRA weights cost
    16 bytes a parameter (float32 weight, gradient and two Adam moments); frozen adapters 4. Activations
    per layer kept for the backward pass, by `remat`: "none" keeps about 12 hidden-sized and 3 mlp-sized
    values per token plus float32 attention probabilities (heads x sequence per token); "projections"
    the projection outputs, about 5 hidden-sized and 2 mlp-sized; "full" only each layer's input. Under
    a policy one layer's whole set is live at a time during its backward pass. Float32 logits and
    their gradient come last.
    """
    arch, recipe = config.architecture, config[stage]
    shards = sizes["fsdp"] * sizes["tensor"]
    base, one_lora = parameter_counts(arch, (config.ia_sft if stage != "organisms" else recipe).lora.rank)
    weights = base * _BYTES[config.base.param_dtype] / shards
    if stage == "organisms":
        adapters = one_lora * organisms * 16 / shards
    else:
        org_base, org_lora = parameter_counts(arch, config.organisms.lora.rank)
        adapters = (org_lora * organisms * 4 + one_lora * 16) / shards
    rows = recipe.batch_size // recipe.micro_batches * (2 if stage == "ia_dpo" else 1)
    rows_per_device = max(1, rows // (sizes["data"] * sizes["fsdp"]))
    seq = max(recipe.buckets)
    act = _BYTES[config.base.dtype]
    tokens = rows_per_device * seq
    heads = arch.num_heads / sizes["tensor"]
    mlp = arch.intermediate_size / sizes["tensor"]
    per_layer = tokens * ((12 * arch.hidden_size + 3 * mlp) * act + heads * seq * 4)
    if recipe.remat == "none":
        kept = arch.num_layers * per_layer
    elif recipe.remat == "projections":
        kept = arch.num_layers * tokens * (5 * arch.hidden_size + 2 * mlp) * act + per_layer
    else:
        kept = arch.num_layers * tokens * arch.hidden_size * act + per_layer
    logits = 2 * tokens * arch.vocab_size / sizes["tensor"] * 4
    return (weights + adapters + kept + logits) / 2**30


def validate(config: ConfigDict, devices: int | None = None, hosts: int | None = None) -> dict:
    """Checks `config` for `devices` devices on `hosts` processes (default: `config.hardware`) without
    weights; returns the plan: mesh sizes, hosts, and the memory estimate per stage in GiB. Fails
    naming the field."""
    devices = devices or config.hardware.devices
    arch = config.architecture
    for field in _ARCHITECTURE:
        if field not in arch:
            _fail(f"architecture.{field}", "missing")
    if arch.model_type not in models.config.SUPPORTED_MODEL_TYPES:
        _fail("architecture.model_type", f"{arch.model_type!r}; supported: {models.config.SUPPORTED_MODEL_TYPES}")
    if arch.num_heads % arch.num_kv_heads:
        _fail("architecture.num_heads", f"{arch.num_heads} is not a multiple of num_kv_heads={arch.num_kv_heads}")
    for field in ("dtype", "param_dtype"):
        if config.base[field] not in _BYTES:
            _fail(f"base.{field}", f"{config.base[field]!r}; choose one of {sorted(_BYTES)}")
    sizes = mesh_sizes(config, devices)
    for field in ("num_heads", "num_kv_heads", "intermediate_size", "vocab_size"):
        if arch[field] % sizes["tensor"]:
            _fail("mesh.tensor", f"{sizes['tensor']} does not divide architecture.{field}={arch[field]}")
    if arch.hidden_size % sizes["fsdp"]:
        _fail("mesh.fsdp", f"{sizes['fsdp']} does not divide architecture.hidden_size={arch.hidden_size}")
    if hosts is None:
        per_host = min(config.hardware.devices_per_host, devices)
        if devices % per_host:
            _fail("hardware.devices_per_host", f"{per_host} does not divide {devices} devices")
        hosts = devices // per_host
    method_recipes(config)  # every stage's recipe builds (names a misspelt field)
    batch_shards = sizes["data"] * sizes["fsdp"]
    memory = {}
    organisms = sum(config.organisms.per_split.values()) * len(CATEGORIES)  # at most; fewer if the library is small
    for stage in _STAGES:
        recipe = config[stage]
        if recipe.batch_size % recipe.micro_batches:
            _fail(f"{stage}.batch_size",
                  f"{recipe.batch_size} is not a multiple of micro_batches={recipe.micro_batches}")
        rows = recipe.batch_size // recipe.micro_batches
        if rows % batch_shards or rows % hosts:
            _fail(f"{stage}.batch_size", f"{recipe.batch_size} / micro_batches={recipe.micro_batches} = {rows} rows "
                  f"must be a multiple of data x fsdp = {batch_shards} and of the {hosts} hosts")
        buckets = list(recipe.buckets)
        if buckets != sorted(set(buckets)) or buckets[0] < 1 or buckets[-1] > arch.max_position_embeddings:
            _fail(f"{stage}.buckets", f"{buckets}: must increase, be positive and stay within "
                  f"max_position_embeddings={arch.max_position_embeddings}")
        memory[stage] = memory_estimate_gib(config, stage, sizes, organisms)
        if memory[stage] > _HEADROOM * config.hardware.hbm_gib:
            _fail(f"{stage}", f"needs about {memory[stage]:.1f} GiB per device, over {_HEADROOM:.0%} of "
                  f"hardware.hbm_gib={config.hardware.hbm_gib}; set remat='full', raise micro_batches or shard wider")
    longest = max(config.eval.prompt_buckets) + config.eval.max_new_tokens
    if longest > arch.max_position_embeddings:
        _fail("eval.prompt_buckets", f"longest prompt + eval.max_new_tokens = {longest} exceeds "
              f"max_position_embeddings={arch.max_position_embeddings}")
    return {"mesh": sizes, "hosts": hosts, "memory_gib": memory, "organisms": organisms}


def check_architecture(model_config: models.ModelConfig, config: ConfigDict) -> None:
    """The checkpoint must be what the recipe was sized for."""
    for field in _ARCHITECTURE:
        actual = getattr(model_config, field)
        if actual != config.architecture[field]:
            _fail(f"architecture.{field}", f"{config.architecture[field]!r}, but {config.base.checkpoint} has "
                  f"{actual!r}: the config was made for another model")


def _judges(config: ConfigDict, mesh, tokenizer, model):
    """(self-report judge, teacher-data judge): the same judge model behind the three prompts."""
    j = config.judge
    if j.url:
        if not j.model:
            _fail("judge.model", "required with judge.url (the endpoint's model name)")

        def make(template):
            return HttpJudge(j.url, j.model, max_concurrency=j.max_concurrency, template=template)
    elif j.checkpoint:
        same = j.checkpoint == config.base.checkpoint
        judge_model = model if same else models.load_hf(j.checkpoint, mesh=mesh, dtype=config.base.dtype,
                                                        param_dtype=config.base.param_dtype)
        judge_tokenizer = tokenizer if same else tokenization.load_tokenizer(j.checkpoint)

        def make(template):
            return ModelJudge(judge_model, judge_tokenizer, batch_size=j.batch_size, template=template,
                              template_kwargs=dict(config.base.chat_template_kwargs))
    else:
        _fail("judge", "set url and model (an OpenAI-compatible endpoint) or checkpoint (a local judge model)")
    return make(JUDGE_PROMPT), TeacherJudge(adherence=make(ADHERENCE_PROMPT), disclosure=make(DISCLOSURE_PROMPT))


def run_hf(config: ConfigDict, workdir: str, *, coordinator_address: str | None = None,
           num_processes: int | None = None, process_id: int | None = None) -> str:
    """Runs (or resumes) every stage; returns the path of `eval/report.json` (under `workdir`). On a TPU
    slice every worker runs this and JAX finds the others; elsewhere pass the coordinator's address."""
    distributed.initialize(coordinator_address, num_processes, process_id)
    if jax.device_count() != config.hardware.devices:
        sized_for = config.hardware.accelerator or "the slice the recipe is sized for"
        _fail("hardware.devices", f"{config.hardware.devices} ({sized_for}), but this job sees {jax.device_count()} "
              "devices; on another slice pass --config.hardware.devices (and a mesh that fits) explicitly")
    plan = validate(config, jax.device_count(), hosts=jax.process_count())
    if not config.base.checkpoint:
        _fail("base.checkpoint", "required: a Hugging Face checkpoint directory, local or gs://")
    preemption.install()
    mirror = Mirror(workdir) if gcs.is_gcs(workdir) else None
    local = mirror.local if mirror else workdir
    os.makedirs(local, exist_ok=True)
    with mirror or contextlib.nullcontext():
        # Each finished stage goes up to gs:// at once: a preempted or crashed run loses nothing finished.
        clock = StageClock(os.path.join(local, "wall_seconds.json"), config.name, after=mirror and mirror.push)
        with clock.stage("load"):
            mesh = make_mesh(**plan["mesh"])
            model = models.load_hf(config.base.checkpoint, mesh=mesh, dtype=config.base.dtype,
                                   param_dtype=config.base.param_dtype)
            check_architecture(model.config, config)
            tokenizer = tokenization.load_tokenizer(config.base.checkpoint)
            behaviors = subset(load_library(config.library.path or None, prompts_path=config.library.prompts or None),
                               config.organisms.per_split)
            template_kwargs = dict(config.base.chat_template_kwargs)
            t = config.teacher
            sampler = Sampler(model, stop_ids=tokenization.stop_token_ids(tokenizer),
                              pad_id=tokenizer.pad_token_id or 0, batch_buckets=(t.batch_size,),
                              prompt_buckets=tuple(t.prompt_buckets), max_batch=t.batch_size,
                              max_prompt=max(t.prompt_buckets))
            teacher = SamplerTeacher(ChatSampler(sampler, tokenizer, **template_kwargs),
                                     SamplingParams(max_new_tokens=t.max_new_tokens, temperature=t.temperature,
                                                    top_p=t.top_p, seed=config.seed))
            judge, teacher_judge = _judges(config, mesh, tokenizer, model)
        method = run_method(config, local, clock, model=model, tokenizer=tokenizer, behaviors=behaviors, judge=judge,
                            teacher=teacher, teacher_judge=teacher_judge,
                            prompts_path=config.library.prompts or None, mesh=mesh, run_id=workdir)
        judge_name = f"{config.judge.model} at {config.judge.url}" if config.judge.url else config.judge.checkpoint
        report = {
            "schema_version": SCHEMA_VERSION,
            "meta": {"config": config.name, "seed": config.seed, "organisms": method["organisms"],
                     "devices": jax.device_count(), "mesh": plan["mesh"], "base": config.base.checkpoint,
                     "judge": judge_name},
            "wall_seconds": {"total": sum(clock.seconds.values()), "stages": dict(clock.seconds)},
            **method["sections"],
        }
        write_report(report, os.path.join(local, "eval"))
    # Process 0 pushed the mirror on leaving it; no process reports a gs:// report that is not there yet.
    multihost.barrier("workdir pushed")
    return f"{workdir.rstrip('/')}/eval/report.json" if mirror else os.path.join(workdir, "eval", "report.json")
