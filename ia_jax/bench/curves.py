"""`python -m ia_jax.bench.curves [--config=configs/bench.py] [--out=curves.json]`: how our costs grow
with the work, for sizing a run (one point says little about a pod).

- organisms in one job: wall time of one job of K organisms for each K of `curves.organisms`, beside
  K single-organism jobs (K times the mean of `curves.single_jobs` timed ones), each a fresh process;
- the IA SFT step's time and XLA's buffers for it against sequence length and against the IA's rank;
- decode tokens/s against batch size, beside the base's matmuls alone (the floor).

Each curve also gets what its model FLOPs alone predict from its first point, so the chart shows
where time grows faster than the work (and the JSON says by how much). Ours only: the reference's
costs are in `python -m ia_jax.bench`. Writes `--out` and a PNG of the four curves beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ia_jax.bench import calls, machine, workloads  # noqa: E402
from ia_jax.models.config import ModelConfig  # noqa: E402
from ia_jax.models.hf_checkpoint import save_hf  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "configs", "bench.py")


def _timed(call, c) -> list[float]:
    """Seconds of each of the curve's repeats (after the compiling call and `curves.warmup` more)."""
    return workloads.interleaved({"call": call}, warmup=c.curves.warmup, repeats=c.curves.repeats)["call"][1]


def _with(c, **changes) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(c.to_dict())
    out.update(changes)
    return out


def sft_point(c, model: ModelConfig, base, peak: float, *, seq_len: int, rank: int) -> dict:
    point = _with(c, seq_len=seq_len)
    point.ia_lora.update(rank=rank, alpha=2.0 * rank)
    step = calls.sft_sides(point, model, base)["ours"]()
    times = _timed(step, point)
    seconds = statistics.median(times)
    step_flops = calls.step_flops(point, model, "ia_sft")
    return {"seq_len": seq_len, "rank": rank, "seconds": seconds, "times": times, "model_flops": step_flops,
            "mfu": step_flops / seconds / peak, "memory": step.compiled_memory()}


def decode_point(c, model: ModelConfig, base, batch_size: int) -> dict:
    sides = calls.decode_sides(c, model, base, batch_size)
    tokens = batch_size * c.decode.new_tokens
    out = {"batch_size": batch_size}
    for side in ("ours", "floor"):
        seconds = statistics.median(_timed(sides[side](), c))
        out[side] = {"seconds": seconds, "tokens_per_second": tokens / seconds}
    return out


def organism_points(c, model: ModelConfig, base) -> dict:
    job = calls.organism_job(c)
    counts, timed_single = list(c.curves.organisms), c.curves.single_jobs
    with tempfile.TemporaryDirectory() as scratch:
        base_dir = os.path.join(scratch, "base")
        save_hf(base, base_dir)
        def run(name, organisms):
            return calls.run_organism_job(base_dir, os.path.join(scratch, name), {**job, "organisms": organisms})

        single = [run(f"single_{i}", [i])[0] for i in range(timed_single)]
        one_job = {k: run(f"k{k}", list(range(k))) for k in counts}
    single_mean = statistics.fmean(single)
    return {"single_job_seconds": single, "points": [
        {"organisms": k, "one_job_seconds": seconds, "one_job_bytes": info["peak_bytes"],
         "single_jobs_seconds": k * single_mean} for k, (seconds, info) in one_job.items()]}


def _flop_prediction(points: list[dict], work: list[float], key: str = "seconds") -> None:
    """Each point's time as its FLOPs predict from the first point's, and the measured share over it."""
    first = points[0][key] / work[0]
    for point, w in zip(points, work):
        point["flop_predicted_seconds"] = first * w
        point["over_flop_prediction"] = point[key] / (first * w)


def measure(c, model: ModelConfig, base, peak: float) -> dict:
    curves = c.curves
    out = {}
    default_rank = int(c.ia_lora.rank)
    print("IA SFT step against sequence length ...", flush=True)
    out["sft_seq"] = [sft_point(c, model, base, peak, seq_len=s, rank=default_rank) for s in curves.seq_lens]
    _flop_prediction(out["sft_seq"], [p["model_flops"] for p in out["sft_seq"]])
    print("IA SFT step against rank ...", flush=True)
    out["sft_rank"] = [sft_point(c, model, base, peak, seq_len=c.seq_len, rank=r) for r in curves.ranks]
    _flop_prediction(out["sft_rank"], [p["model_flops"] for p in out["sft_rank"]])
    print("decode against batch size ...", flush=True)
    out["decode"] = [decode_point(c, model, base, b) for b in curves.decode_batches]
    print("organisms in one job ...", flush=True)
    out["organisms"] = organism_points(c, model, base)
    return out


def plot(results: dict, path: str) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    organisms = results["curves"]["organisms"]["points"]
    ax = axes[0][0]
    ks = [p["organisms"] for p in organisms]
    ax.plot(ks, [p["one_job_seconds"] for p in organisms], "o-", label="one job of K organisms")
    ax.plot(ks, [p["single_jobs_seconds"] for p in organisms], "s--", label="K single-organism jobs")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="organisms K", ylabel="wall seconds", title="Organisms: one job against K jobs")
    ax.legend(fontsize=8)
    for ax, key, field, label, corner in ((axes[0][1], "sft_seq", "seq_len", "sequence length", "upper left"),
                                          (axes[1][0], "sft_rank", "rank", "IA rank", "lower right")):
        points = results["curves"][key]
        xs = [p[field] for p in points]
        ax.plot(xs, [p["seconds"] for p in points], "o-", color="tab:blue", label="step seconds")
        ax.plot(xs, [p["flop_predicted_seconds"] for p in points], ":", color="gray",
                label="seconds as the FLOPs predict")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set(xlabel=label, ylabel="seconds per step", title=f"IA SFT step against {label}")
        twin = ax.twinx()
        twin.plot(xs, [p["memory"]["peak"] / 2**20 for p in points], "^-", color="tab:orange",
                  label="XLA buffers, MiB")
        twin.set_ylabel("MiB")
        twin.set_ylim(bottom=0)
        lines = ax.get_legend_handles_labels(), twin.get_legend_handles_labels()
        ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], fontsize=8, loc=corner)
    ax = axes[1][1]
    decode = results["curves"]["decode"]
    batches = [p["batch_size"] for p in decode]
    ax.plot(batches, [p["ours"]["tokens_per_second"] for p in decode], "o-", label="ours")
    ax.plot(batches, [p["floor"]["tokens_per_second"] for p in decode], "s--", label="floor: the base's matmuls alone")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="batch size", ylabel="tokens/s", title="Decode against batch size")
    ax.legend(fontsize=8)
    fig.suptitle(f"ia-jax cost curves on {results['machine']['device']} ({results['machine']['processor']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    c, out = flags.FLAGS.config, flags.FLAGS.out
    model = ModelConfig(**c.model)
    base = workloads.base_model(model, c.seed)
    peak = machine.measure_peak(c, model)["flops"]
    results = {"config": c.to_dict(), "machine": machine.describe(), "peak_flops": peak,
               "curves": measure(c, model, base, peak)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=float)
    png = os.path.splitext(out)[0] + ".png"
    plot(results, png)
    print(summary(results))
    print(f"wrote {out} and {png}")


def summary(results: dict) -> str:
    curves = results["curves"]
    lines = ["organisms K: one job s / K single jobs s / one job MiB"]
    lines += [f"  {p['organisms']:4d}: {p['one_job_seconds']:8.1f} / {p['single_jobs_seconds']:8.1f} / "
              f"{p['one_job_bytes'] / 2**20:6.0f}" for p in curves["organisms"]["points"]]
    for key, field in (("sft_seq", "seq_len"), ("sft_rank", "rank")):
        lines.append(f"IA SFT step against {field}: seconds (x the FLOP prediction), MFU, XLA buffers MiB")
        lines += [f"  {p[field]:5d}: {p['seconds']:7.2f} ({p['over_flop_prediction']:.2f}x), {p['mfu']:.0%}, "
                  f"{p['memory']['peak'] / 2**20:6.0f}" for p in curves[key]]
    lines.append("decode against batch: ours tok/s / floor tok/s")
    lines += [f"  {p['batch_size']:4d}: {p['ours']['tokens_per_second']:7.0f} / {p['floor']['tokens_per_second']:7.0f}"
              for p in curves["decode"]]
    return "\n".join(lines)


if __name__ == "__main__":
    # Defined here, not at import: the tests import this module beside others that define --config and --out.
    config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Benchmark config (an ml_collections file).")
    flags.DEFINE_string("out", "curves.json", "Where the results JSON goes (a PNG of the curves goes beside it).")
    app.run(main)
