"""Fixtures shared by the whole suite.

`shared_data` is the one way a test reaches the public datasets (see tests/shared_paths.py, which tests
import `require_data` and `REPO` from).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from shared_paths import require_data


@pytest.fixture
def shared_data() -> Path:
    """The shared datasets' root folder (see the module docstring)."""
    return require_data()
