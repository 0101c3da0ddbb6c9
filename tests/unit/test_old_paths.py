"""Users' imports of the modules that moved in the regroup by concern (issue 33) keep working: every public
name the old `cifar_dist.export` and `cifar_dist.wandb_records` packages had is still there.

    python -m pytest tests/unit/test_old_paths.py
"""

from __future__ import annotations

import importlib

import pytest

# The public names of the two packages as they were at 50fc973 (before the regroup).
OLD_PUBLIC = {
    "cifar_dist.export": [
        "CHECKPOINT_FORMAT",
        "CHECKPOINT_FORMAT_VERSION",
        "BUILTIN_MODEL_ARGS",
        "MODEL_ARGS",
        "FORMAT",
        "FORMAT_VERSION",
        "WEIGHTS",
        "model_metadata",
        "checkpoint_dict",
        "build_model_from_checkpoint",
        "load_checkpoint",
        "model_config",
        "read_model_folder",
        "load_model",
        "model_card",
        "write_model_folder",
        "add_test_results",
        "push_to_hub",
    ],
    "cifar_dist.wandb_records": ["RecordFileError", "inspect", "RunRecords", "read_run", "find_run_files", "describe"],
    "cifar_dist": ["load_model", "TutorialCNN", "TutorialCNNBN", "ResNetFast", "Airbench"],
}


@pytest.mark.parametrize("module", list(OLD_PUBLIC))
def test_every_old_public_name_still_imports(module):
    mod = importlib.import_module(module)
    missing = [name for name in OLD_PUBLIC[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"
