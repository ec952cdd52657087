"""The benchmark's table and chart: ours against transformers + peft, per workload, with the targets."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The targets on the 2-core CPU (ours / reference, or one job / sequential jobs).
TARGETS = {"ia_sft": 1.5, "decode": 2.0, "organisms": 5.0}


def rows(results: dict) -> list[tuple[str, str, str, float | None, float | None]]:
    """(workload, ours, reference, ratio, target) per line."""
    out = []
    w = results["workloads"]
    for name in ("ia_sft", "dpo"):
        if name in w:
            r = w[name]
            ours = f"{r['ours']['tokens_per_second']:.0f} tok/s, MFU {r['ours']['mfu']:.0%}"
            ref = (f"{r['reference']['tokens_per_second']:.0f} tok/s, MFU {r['reference']['mfu']:.0%}"
                   if "reference" in r else "-")
            out.append((f"{name} step", ours, ref, r.get("ratio"), TARGETS.get(name)))
    if "organisms" in w:
        r = w["organisms"]
        k = r["organisms"]
        out.append((f"{k} organisms: one job vs {k} jobs", f"{r['ours']['one_job_seconds']:.1f} s",
                    f"{r['ours']['sequential_seconds']:.1f} s (ours, sequential)", r["ours"]["speedup"],
                    TARGETS["organisms"]))
        if "reference" in r:
            out.append((f"{k} organisms: one job vs peft", f"{r['ours']['one_job_seconds']:.1f} s",
                        f"{r['reference']['sequential_in_one_process_seconds']:.1f} s (peft, one process)",
                        r["ratio"], None))
    for key, r in w.get("decode", {}).items():
        ref = f"{r['reference']['tokens_per_second']:.0f} tok/s" if "reference" in r else "-"
        out.append((f"decode {key.replace('_', ' ')}", f"{r['ours']['tokens_per_second']:.0f} tok/s", ref,
                    r.get("ratio"), TARGETS["decode"]))
        if "floor" in r:
            out.append((f"  bound ({key.replace('_', ' ')}): matmuls only",
                        f"{r['floor']['tokens_per_second']:.0f} tok/s", ref,
                        r.get("ratio_bound"), None))
    return out


def table(results: dict) -> str:
    lines = [f"{'workload':38s} {'ours':28s} {'reference':38s} {'ratio':>7s} {'target':>7s}"]
    for name, ours, ref, ratio, target in rows(results):
        lines.append(f"{name:38s} {ours:28s} {ref:38s} {'-' if ratio is None else f'{ratio:.2f}x':>7s} "
                     f"{'' if target is None else f'{target:.1f}x':>7s}")
    return "\n".join(lines)


def plot_ratios(results: dict, path: str) -> None:
    entries = [(name, ratio, target) for name, _, _, ratio, target in rows(results) if ratio is not None]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(len(entries), 1)))
    # Bars by position, not by label: a categorical axis would merge rows that share a name.
    ax.barh(range(len(entries)), [e[1] for e in entries], color="tab:blue")
    ax.set_yticks(range(len(entries)), [e[0].strip() for e in entries])
    for i, (_, _, target) in enumerate(entries):
        if target is not None:
            ax.plot([target, target], [i - 0.4, i + 0.4], color="tab:red")
    ax.axvline(1.0, color="gray", linestyle=":")
    ax.invert_yaxis()
    ax.set_xlabel("speed-up (red: target)")
    ax.set_title(f"ia-jax vs transformers+peft on {results['machine']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
