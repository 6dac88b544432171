import pytest
import torch


@pytest.fixture
def gen():
    """A seeded generator, so that every test draws the same inputs on every run."""
    return torch.Generator().manual_seed(0)
