"""How close a victim's training step comes to the CPU's matmul peak, per memory format.

One process, one intra-op thread (what a worker uses), measured side by side so machine load
affects both sides alike:

- the peak: fp32 matmul of square sizes 1024 and 2048, best of several rounds, in GFLOP/s;
- a training step (forward, backward, SGD update) of the victim at batch 128, its FLOPs counted
  by torch's FlopCounterMode, timed contiguous and channels_last.

It prints a table and writes JSON (`--out`). The target for fastnet is a step at >= 60% of the
peak. Run: `python benchmarks/step_efficiency.py [--victim fastnet] [--out FILE]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak(rounds: int = 5) -> dict[str, float]:
    """Best fp32 matmul rate over `rounds` for each size, in GFLOP/s."""
    out = {}
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = 0.0
        for _ in range(rounds):
            start = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
        out[str(n)] = best
    return out


def build(victim: str, params: dict[str, object]) -> torch.nn.Module:
    from ueb.registry import get_registry

    return get_registry().create("victim", victim, params).build(10, 32, 3)  # type: ignore[no-any-return]


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def time_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Median seconds per SGD step over `steps`, after a warm-up."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(victim: str, params: dict[str, object], batch: int, steps: int) -> dict[str, object]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    peak = matmul_peak()
    peak_best = max(peak.values())
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    rows = []
    for layout in ("contiguous", "channels_last"):
        torch.manual_seed(0)
        model = build(victim, params)
        xs = x
        if layout == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            xs = x.contiguous(memory_format=torch.channels_last)
        flops = step_flops(model, xs, y)
        seconds = time_steps(model, xs, y, steps)
        rate = flops / seconds / 1e9
        rows.append(
            {
                "layout": layout,
                "gflop_per_step": flops / 1e9,
                "ms_per_step": seconds * 1e3,
                "gflop_per_s": rate,
                "share_of_peak": rate / peak_best,
            }
        )
    from ueb.numerics import cpu_model

    return {
        "victim": victim,
        "params": params,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "matmul_peak_gflop_per_s": peak,
        "steps": rows,
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victim", default="fastnet")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = measure(args.victim, {}, args.batch, args.steps)
    peak = max(result["matmul_peak_gflop_per_s"].values())  # type: ignore[union-attr]
    print(f"{result['cpu']} ({result['isa']}), 1 thread, matmul peak {peak:.1f} GFLOP/s")
    for row in result["steps"]:  # type: ignore[union-attr]
        print(
            f"  {args.victim} batch {args.batch} {row['layout']:>13}: {row['ms_per_step']:6.1f} ms/step, "
            f"{row['gflop_per_step']:.2f} GFLOP, {row['gflop_per_s']:5.1f} GFLOP/s = {row['share_of_peak']:.0%} of peak"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
