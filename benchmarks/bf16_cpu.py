"""fp32 against bf16 autocast on this CPU: training-step images/s of the fast presets' networks, the two
precisions interleaved round by round in one process (so load from other work hits both alike), medians.

    OMP_NUM_THREADS=2 python benchmarks/bf16_cpu.py [--rounds 5] [--steps 3]

Networks as the presets train them (channels_last, SGD Nesterov, label smoothing): tutorial_fast's
tutorial_cnn at batch 128, fast's airbench width 32 and airbench's width 64 at batch 512. Prints the CPU's
bf16 flags from /proc/cpuinfo, the load average before and after, and one line per network:
fp32 and bf16 medians and their ratio. Synthetic images: throughput does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from cifar_dist.distributed.accelerator import cpu_bf16_flags
from cifar_dist.models.registry import build_model

NETWORKS = {  # preset: (model, width, batch)
    "tutorial_fast": ("tutorial_cnn", 0, 128),
    "fast": ("airbench", 32, 512),
    "airbench": ("airbench", 64, 512),
}


def step_rate(model, opt, x, y, bf16: bool, steps: int) -> float:
    """Images/s over `steps` training steps (after one untimed step)."""
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2)

    def one():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=list(NETWORKS))
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}; {torch.get_num_threads()} threads; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; CPU bf16 flags: {sorted(cpu_bf16_flags()) or 'none'}; "
        f"load average before {os.getloadavg()[0]:.2f}"
    )
    for preset in args.only:
        name, width, batch = NETWORKS[preset]
        torch.manual_seed(0)
        kw = {"width": width} if width else {}
        model = build_model(name, 3, 32, 10, **kw).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,))
        rates = {False: [], True: []}
        for r in range(args.rounds):
            for bf16 in (False, True) if r % 2 == 0 else (True, False):
                rates[bf16].append(step_rate(model, opt, x, y, bf16, args.steps))
        fp32, bf16 = statistics.median(rates[False]), statistics.median(rates[True])
        print(
            f"{preset:14s} {name} w{width or '-'} batch {batch}: fp32 {fp32:,.0f} img/s, bf16 {bf16:,.0f} img/s, "
            f"bf16/fp32 {bf16 / fp32:.2f}x (medians of {args.rounds} interleaved rounds of {args.steps} steps; "
            f"ranges fp32 {min(rates[False]):,.0f}-{max(rates[False]):,.0f}, "
            f"bf16 {min(rates[True]):,.0f}-{max(rates[True]):,.0f})",
            flush=True,
        )
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
