"""Where the shared datasets are, for every test (import from here, not from conftest: several conftest
modules share that name, so `from conftest import ...` picks whichever was imported last).

`PLMKIT_DATA` names the folder (default `../shared/data` beside the repository). When a dataset is missing
the test is skipped with a line that says how to get it, unless `PLMKIT_REQUIRE_DATA=1` (CI sets it), which
turns the skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def data_dir() -> Path:
    """Where the shared datasets live: `$PLMKIT_DATA`, else `../shared/data` beside the repository."""
    return Path(os.environ.get("PLMKIT_DATA") or DEFAULT_DATA)


def require_data(*parts: str) -> Path:
    """The path of a shared dataset file or folder; skips (or fails under PLMKIT_REQUIRE_DATA=1) if absent."""
    path = data_dir().joinpath(*parts)
    if path.exists():
        return path
    message = (
        f"shared dataset {path} not found: run `scripts/get-data {data_dir()}` "
        "or set PLMKIT_DATA to a folder that holds it"
    )
    if os.environ.get("PLMKIT_REQUIRE_DATA") == "1":
        pytest.fail(message + " (PLMKIT_REQUIRE_DATA=1)", pytrace=False)
    pytest.skip(message)
