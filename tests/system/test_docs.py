"""The README and docs/ stay a readable guide: every relative link and image resolves to a file,
no Markdown line runs past 200 characters, and the README stays a short user's guide.

    python -m pytest tests/system/test_docs.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _relative_targets(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z]+:|^#", t)]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(path):
    missing = [t for t in _relative_targets(path) if not (path.parent / t.split("#")[0]).exists()]
    assert not missing, f"{path.name}: links to missing files {missing}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_markdown_line_over_200_characters(path):
    long = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if len(line) > 200]
    assert not long, f"{path.name}: lines over 200 characters: {long}"


def test_readme_is_a_short_guide_that_links_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    linked = {Path(t.split("#")[0]).name for t in _relative_targets(ROOT / "README.md")}
    orphans = [p.name for p in MARKDOWN[1:] if p.name not in linked]
    assert not orphans, f"docs not linked from README.md: {orphans}"


def test_folders_the_readme_writes_into_are_git_ignored():
    """What the README's commands write (data caches, runs, figures from --plots) stays out of
    `git status`; docs/figures/ is the exception, committed on purpose."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    text = (ROOT / "README.md").read_text()
    plots = {m.group(1).rstrip("/") for m in re.finditer(r"--plots[ =]([^\s`)]+)", text)} - {"docs/figures"}
    assert "figs" in plots, plots
    for folder in sorted(plots | {"data", "runs", "wandb"}):
        p = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x.png"], cwd=ROOT)
        assert p.returncode == 0, f"{folder}/ is not in .gitignore"
