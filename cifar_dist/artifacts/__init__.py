"""What a run leaves on disk: every name in a run folder (`run_dir`), metrics.jsonl (`metrics`), the model
format, best.pt and `model/` (`export`)."""
