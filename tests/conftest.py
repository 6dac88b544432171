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


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``), every test that reads the built book runs on
    one worker, so that the book is built once and never by two processes at a time."""
    for item in items:
        if "built_book" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("book"))
