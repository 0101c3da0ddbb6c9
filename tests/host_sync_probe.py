"""Run a real training (cifar_dist.train.loop.train) with every call to train_epoch under a TorchFunctionMode that
records host syncs: a tensor made from Python data (on a GPU: a host-to-device copy that waits for the queued
work) and any device-to-host read (.item(), float(), int(), bool(), .cpu(), .tolist(), .numpy()). Each record
carries state.step at that moment. Prints one JSON list [[step, what, where], ...]; used by
tests/system/test_gpu_ready.py in a subprocess of its own (Accelerate's state is per process).

    python tests/host_sync_probe.py --preset tutorial_fast --data.name=synthetic ...
"""

from __future__ import annotations

import json
import sys
import traceback

import torch
from torch.overrides import TorchFunctionMode

from cifar_dist.config import resolve
from cifar_dist.train import loop as trainer

FROM_PYTHON = {torch.tensor, torch.as_tensor, torch.Tensor.new_tensor}
READS = {"item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__"}


class HostSyncs(TorchFunctionMode):
    def __init__(self, state, found: list):
        super().__init__()
        self.state, self.found = state, found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if func in FROM_PYTHON and not (args and isinstance(args[0], torch.Tensor)):
            self._record(f"tensor from Python data: torch.{name}")
        elif name in READS:
            self._record(f"device-to-host read: .{name}()")
        return func(*args, **(kwargs or {}))

    def _record(self, what: str) -> None:
        frame = next(
            (f for f in reversed(traceback.extract_stack()[:-2]) if "cifar_dist" in f.filename),
            traceback.extract_stack()[-3],
        )
        self.found.append([self.state.step, what, f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"])


def main(argv: list[str]) -> None:
    preset, overrides = argv[0], argv[1:]
    cfg = resolve(preset, None, overrides)
    found: list = []
    original = trainer.train_epoch

    def probed(job, run):
        with HostSyncs(run.state, found):
            return original(job, run)

    trainer.train_epoch = probed
    trainer.train(cfg)
    print("HOST_SYNCS " + json.dumps(found))


if __name__ == "__main__":
    main(sys.argv[1:])
