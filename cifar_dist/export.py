"""The model format's old path, kept for users' imports and commands; it lives in artifacts/export.py.

python -m cifar_dist.export runs/<run>                       # (re)write model/ from best.pt
python -m cifar_dist.export runs/<run> --push-to-hub you/cifar10-seed   # upload model/ to the Hub
"""

from .artifacts.export import (  # noqa: F401 - re-exported
    BUILTIN_MODEL_ARGS,
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    FORMAT,
    FORMAT_VERSION,
    MODEL_ARGS,
    WEIGHTS,
    add_test_results,
    build_model_from_checkpoint,
    checkpoint_dict,
    load_checkpoint,
    load_model,
    model_card,
    model_config,
    model_metadata,
    push_to_hub,
    read_model_folder,
    write_model_folder,
)

if __name__ == "__main__":
    from .cli.export import main
    from .cli.main import main as run_command

    run_command(main, None)
