"""Shared fixtures, and the ``exhaustive`` marker: such tests are deselected unless ``-m`` names
them (``pytest -m exhaustive`` runs the rest of the grids; ``-m "exhaustive or not exhaustive"``
everything, the sampled cases with their full option sets too; CI runs the sampled grids)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny problems: threads only add contention on shared CI cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_collection_modifyitems(config, items):
    if "exhaustive" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("exhaustive") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("exhaustive")])
        items[:] = kept
