import pytest
import torch
from book_build import HTML, ROOT, build


@pytest.fixture
def gen():
    """A seeded generator, so that every test draws the same inputs on every run."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def built_book():
    """The course's book, built once per test session (from the execution cache where it
    is fresh), for every test that reads the built site."""
    run = build(ROOT)
    assert run.returncode == 0, (
        f"the book build failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    )
    return HTML
