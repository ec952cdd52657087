"""The transformers + peft (PyTorch) side of the benchmark: the reference our JAX numbers are compared with.

Our train steps and sampler are only worth having if they beat what a user would otherwise run: a stock
transformers model with peft LoRA adapters, trained with `torch.optim.AdamW` and sampled with `model.generate`.
This module builds exactly that, as calls the harness times in turns with ours, written the plain way (no
torch.compile, no custom kernels), on the same shapes, adapters and hyper-parameters as the JAX side, and shares
no code with it, so it is an independent baseline. Each step checks once that only the adapter meant to train gets
gradients. torch, transformers and peft come with `pip install -e .[test]` and are imported only when a function
runs, so the package imports without them.
"""

from __future__ import annotations

import functools
import time

import numpy as np

_TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
            "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
_CONFIG_CLASSES = {"llama": "LlamaConfig", "qwen3": "Qwen3Config", "qwen2": "Qwen2Config"}


def _torch():
    try:
        import peft
        import torch
        import transformers
    except ImportError as error:
        raise ImportError(
            "the PyTorch reference benchmark needs torch, transformers and peft: pip install -e .[test]"
        ) from error
    return torch, transformers, peft


def device_name() -> str:
    torch = _torch()[0]
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"cpu (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def _device(model):
    return next(model.parameters()).device


def _sync(device) -> None:
    if device.type == "cuda":
        _torch()[0].cuda.synchronize(device)


def _synced(call, device):
    """`call` made to return only once its work is done on `device` (CUDA runs asynchronously)."""
    def run():
        call()
        _sync(device)

    return run


_DTYPES = ("float32", "bfloat16", "float16")


def build_model(hf_config: dict, seed: int = 0):
    """A random-init transformers causal LM (CUDA when available, else CPU) from a config.json dict, in
    the dict's `dtype` (float32 if it names none): weights, activations and the peft adapters added to it
    (peft gives them the dtype of the layer they wrap) all in it, as `from_pretrained(..., dtype=...)` runs."""
    torch, transformers, _ = _torch()
    model_type = hf_config["model_type"]
    if model_type not in _CONFIG_CLASSES:
        raise ValueError(f"model_type {model_type!r} is not one of {sorted(_CONFIG_CLASSES)}")
    dtype = hf_config.get("dtype") or "float32"
    if dtype not in _DTYPES:
        raise ValueError(f"config dtype {dtype!r} is not one of {list(_DTYPES)}")
    fields = {k: v for k, v in hf_config.items() if k not in ("model_type", "dtype", "torch_dtype")}
    config = getattr(transformers, _CONFIG_CLASSES[model_type])(**fields)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                                          dtype=getattr(torch, dtype))
    return model.to("cuda" if torch.cuda.is_available() else "cpu")


def matmul_call(size: int, dtype: str):
    """A `size`-square matmul in `dtype` (a torch dtype name) on the reference's device, per call."""
    torch = _torch()[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator, device=device).to(getattr(torch, dtype)) for _ in range(2))
    return _synced(lambda: a @ b, device)


def _lora_config(lora: dict):
    return _torch()[2].LoraConfig(
        r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=[_TARGETS[t] for t in lora["targets"]], bias="none", task_type="CAUSAL_LM",
    )


def _lora_params(model, adapter: str):
    return [(n, p) for n, p in model.named_parameters() if f"lora_A.{adapter}." in n or f"lora_B.{adapter}." in n]


def _train_only(model, adapter: str) -> list:
    """Freezes every parameter except `adapter`'s LoRA weights, and returns those."""
    for param in model.parameters():
        param.requires_grad_(False)
    trainable = [p.requires_grad_(True) for _, p in _lora_params(model, adapter)]
    if not trainable:
        raise ValueError(f"adapter {adapter!r} has no LoRA parameters")
    return trainable


def _two_adapter_model(hf_config: dict, organism_lora: dict, ia_lora: dict, seed: int, random_ia: bool = False):
    """Base model + frozen "organism" LoRA (lora_B ~ N(0, 0.01)) + trainable "ia" LoRA, both active."""
    torch, _, peft = _torch()
    model = peft.get_peft_model(build_model(hf_config, seed), _lora_config(organism_lora), adapter_name="organism")
    model.add_adapter("ia", _lora_config(ia_lora))
    model.base_model.set_adapter(["organism", "ia"])
    with torch.no_grad():
        for adapter in ("organism", "ia") if random_ia else ("organism",):
            for name, param in _lora_params(model, adapter):
                if "lora_B" in name:
                    param.normal_(0.0, 0.01)
    return model, _train_only(model, "ia")


def _tensors(batch: dict, device) -> dict:
    torch = _torch()[0]
    tensors = {k: torch.as_tensor(np.asarray(v), device=device) for k, v in batch.items()}
    return {k: v if v.is_floating_point() else v.long() for k, v in tensors.items()}  # embedding wants int64


def _sft_loss(model, batch: dict):
    labels = batch["tokens"].masked_fill(batch["loss_mask"] != 1, -100)  # transformers shifts labels itself
    return model(input_ids=batch["tokens"], attention_mask=batch["attention_mask"], labels=labels).loss


def _dpo_loss(model, batch: dict, beta: float):
    torch = _torch()[0]
    both = {k: torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]]) for k in ("tokens", "attention_mask")}
    both["loss_mask"] = torch.cat([batch["chosen_loss_mask"], batch["rejected_loss_mask"]])
    logits = model(input_ids=both["tokens"], attention_mask=both["attention_mask"]).logits[:, :-1]
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, both["tokens"][:, 1:, None])[..., 0]
    chosen, rejected = (logprobs * both["loss_mask"][:, 1:]).sum(-1).chunk(2)
    margin = (chosen - batch["reference_chosen"]) - (rejected - batch["reference_rejected"])
    return -torch.nn.functional.logsigmoid(beta * margin).mean()


def _trainer(model, trainable: list, learning_rate: float, loss_fn):
    """`step(batch)`: loss_fn, backward, clip 1.0, AdamW, zero_grad; returns the detached loss."""
    torch = _torch()[0]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    trainable_ids, checked = {id(p) for p in trainable}, []

    def step(batch):
        loss = loss_fn(model, batch)
        loss.backward()
        if not checked:  # once: exactly the trainable adapter's parameters got gradients
            wrong = [n for n, p in model.named_parameters() if (id(p) in trainable_ids) != (p.grad is not None)]
            if wrong:
                raise AssertionError(f"gradients on the wrong parameters: {wrong[:4]}")
            checked.append(True)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def ia_sft_step_call(hf_config: dict, batch: dict, *, organism_lora: dict, ia_lora: dict, learning_rate: float,
                     seed: int = 0):
    """One IA SFT step (frozen organism + trainable ia adapter, train mode) on one fixed batch, per call."""
    model, trainable = _two_adapter_model(hf_config, organism_lora, ia_lora, seed)
    model.train()
    step = _trainer(model, trainable, learning_rate, _sft_loss)
    return _synced(functools.partial(step, _tensors(batch, _device(model))), _device(model))


def dpo_step_call(hf_config: dict, batch: dict, *, organism_lora: dict, ia_lora: dict, beta: float,
                  learning_rate: float, seed: int = 0):
    """One hand-written DPO step (one forward over chosen + rejected) on the two-adapter model, per call."""
    model, trainable = _two_adapter_model(hf_config, organism_lora, ia_lora, seed)
    model.train()
    step = _trainer(model, trainable, learning_rate, functools.partial(_dpo_loss, beta=beta))
    return _synced(functools.partial(step, _tensors(batch, _device(model))), _device(model))


def _adapter_names(model) -> set[str]:
    return {name for module in model.modules() if hasattr(module, "lora_A") for name in module.lora_A}


def organism_jobs_seconds(hf_config: dict, organisms: list[dict], *, lora: dict, batch_size: int,
                          learning_rate: float, seed: int = 0) -> dict:
    """Trains one fresh LoRA per organism, one job after another on one base model; wall seconds per job.

    A throwaway "warmup" adapter, inactive during the jobs, takes one untimed step first and is the only
    adapter left between jobs. `batch_size` must match the rows of every batch (a check, the batches are built).
    """
    torch, _, peft = _torch()
    if any(len(b["tokens"]) != batch_size for organism in organisms for b in organism["batches"]):
        raise ValueError(f"every batch must have batch_size={batch_size} rows")
    model = peft.get_peft_model(build_model(hf_config, seed), _lora_config(lora), adapter_name="warmup")
    model.train()
    device = _device(model)
    jobs = [[_tensors(b, device) for b in organism["batches"]] for organism in organisms]
    _trainer(model, _train_only(model, "warmup"), learning_rate, _sft_loss)(jobs[0][0])
    _sync(device)
    per_organism = []
    for index, batches in enumerate(jobs):
        name = f"organism_{index}"
        torch.manual_seed(seed + 1 + index)
        start = time.perf_counter()
        model.add_adapter(name, _lora_config(lora))
        model.base_model.set_adapter(name)
        step = _trainer(model, _train_only(model, name), learning_rate, _sft_loss)
        for batch in batches:
            step(batch)
        model.base_model.set_adapter("warmup")
        model.delete_adapter(name)
        _sync(device)
        per_organism.append(time.perf_counter() - start)
        if _adapter_names(model) != {"warmup"} or list(model.peft_config) != ["warmup"]:
            raise AssertionError(f"adapters accumulate: {sorted(_adapter_names(model))}")
    return {"seconds": sum(per_organism), "per_organism": per_organism, "steps": sum(len(b) for b in jobs)}


def decode_call(hf_config: dict, *, batch_size: int, prompt_tokens: int, new_tokens: int, organism_lora: dict,
                ia_lora: dict, seed: int = 0):
    """Greedy, KV-cached `model.generate` of exactly `new_tokens` tokens per row, both adapters on, per call."""
    torch = _torch()[0]
    model, _ = _two_adapter_model(hf_config, organism_lora, ia_lora, seed, random_ia=True)
    model.eval()
    device = _device(model)
    prompt = torch.randint(0, hf_config["vocab_size"], (batch_size, prompt_tokens), device=device)
    expected = (batch_size, prompt_tokens + new_tokens)

    def generate():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             use_cache=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             eos_token_id=None, pad_token_id=0)
        if tuple(out.shape) != expected:
            raise AssertionError(f"generate returned {tuple(out.shape)}, expected {expected}")

    return _synced(generate, device)
