"""Building the book as the README's command does, and reading its table of contents."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"


def build(folder: Path) -> subprocess.CompletedProcess:
    """Build the book in ``folder`` as ``scripts/build_book.sh`` does."""
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [str(jupyter_book), "build", ".", "--warningiserror", "--nitpick", "--keep-going"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


def toc_pages(root: Path = ROOT) -> list[str]:
    """The pages of ``_toc.yml`` in reading order, as docnames ("book/intro", ...)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts") or []:
        walk(part.get("chapters"))
    return [page.removesuffix(".md").removesuffix(".ipynb") for page in pages]


def config() -> dict:
    """The book's ``_config.yml``."""
    return yaml.safe_load((ROOT / "_config.yml").read_text())
