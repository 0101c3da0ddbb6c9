"""evaluate/evaluation.py in one process: evaluation builds no autograd graph, so its memory does not grow
with the split (issue 35's full-budget airbench_muon run was OOM-killed at 24 GB in its final test pass
when `evaluate` lost its no_grad).

    python -m pytest tests/unit/test_evaluation.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from cifar_dist.evaluate.evaluation import EvalSettings, evaluate


class GradModeProbe(torch.nn.Module):
    """A linear classifier that records, at each forward, whether autograd was recording."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 10)
        self.grad_enabled: list[bool] = []

    def forward(self, x):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("tta, translate", [(False, 0), (True, 0), (True, 1)])
def test_evaluation_runs_every_forward_without_autograd(tta, translate):
    torch.manual_seed(0)
    model = GradModeProbe()
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (20,))
    data = SimpleNamespace(mean=(0.5,) * 3, std=(0.5,) * 3, classes=[str(i) for i in range(10)])
    settings = EvalSettings(batch_size=8, tta=tta, tta_translate=translate, channels_last=False)
    assert torch.is_grad_enabled()  # as in the training loop, which calls evaluate between steps
    result = evaluate(model, images, labels, data, Accelerator(cpu=True), settings)
    views = (6 if translate else 2) if tta else 1
    assert model.grad_enabled == [False] * (3 * views)  # 3 batches (8, 8, 4) × the views of each
    assert result.num_samples == 20 and 0 <= result.correct <= 20
    assert torch.is_grad_enabled()  # and left as it was
