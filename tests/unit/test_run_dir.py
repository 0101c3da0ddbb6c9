"""artifacts/run_dir.py: every name in a run folder, which state a resume reads, what a crashed write
leaves behind and is cleaned, and the cleanup of a run that saved nothing.

    python -m pytest tests/unit/test_run_dir.py
"""

from __future__ import annotations

from cifar_dist.artifacts.run_dir import STATE_FILE, RunDir, run_dir_of


def test_names_in_a_run_folder(tmp_path):
    run = RunDir(tmp_path)
    assert (run.best.name, run.model.name, run.last.name, run.metrics.name) == (
        "best.pt",
        "model",
        "last",
        "metrics.jsonl",
    )
    assert run.last_tmp(7).name == "last.tmp-7" and run.config.name == "config.json"


def test_resume_reads_last_or_after_a_crash_last_old(tmp_path):
    run = RunDir(tmp_path)
    assert run.resumable() is None and not run.holds_run()
    run.last_old.mkdir()
    (run.last_old / STATE_FILE).write_bytes(b"x")
    assert run.resumable() == run.last_old  # a crash between the two renames: last.old is all there is
    run.last.mkdir()
    assert run.resumable() == run.last_old  # an incomplete last/ is not a state
    (run.last / STATE_FILE).write_bytes(b"x")
    assert run.resumable() == run.last and run.holds_run()


def test_clean_stale_removes_what_interrupted_writes_left(tmp_path):
    run = RunDir(tmp_path)
    for name in ("last.tmp-3", "model.tmp-99", "model.old-98"):
        (tmp_path / name).mkdir()
    (tmp_path / ".metrics.jsonl.tmp123").write_text("partial")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    removed = run.clean_stale()
    assert len(removed) == 4 and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_run_that_saved_nothing_leaves_no_folder(tmp_path):
    run = RunDir(tmp_path / "a" / "b")
    created = [run.path, run.path.parent]
    run.path.mkdir(parents=True)
    run.remove_if_nothing_saved(created)
    assert not (tmp_path / "a").exists()
    kept = RunDir(tmp_path / "c")
    kept.path.mkdir()
    kept.best.write_bytes(b"weights")
    kept.remove_if_nothing_saved([kept.path])
    assert kept.best.exists()


def test_the_run_folder_of_a_checkpoint(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")
    assert run_dir_of(tmp_path) == tmp_path
    assert run_dir_of(tmp_path / "best.pt") == tmp_path
    assert run_dir_of(tmp_path / "model") == tmp_path
