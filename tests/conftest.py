import pytest
import torch
from book_build import HTML, ROOT, build
from filelock import FileLock


@pytest.fixture
def gen():
    """A seeded generator, so that every test draws the same inputs on every run."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """The inputs are tiny: one thread is fastest and shares the machine best."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def built_book():
    """The course's book, built once per test session (from the execution cache where it
    is fresh), for every test that reads the built site."""
    HTML.parent.mkdir(exist_ok=True)
    # One build at a time: under pytest-xdist each worker asks for the book, and the second
    # finds it built (Sphinx and the execution cache redo nothing that is up to date).
    with FileLock(HTML.parent / ".build.lock"):
        run = build(ROOT)
    assert run.returncode == 0, (
        f"the book build failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    )
    return HTML
