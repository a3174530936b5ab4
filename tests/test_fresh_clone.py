"""A clone without the shared datasets: `scripts/get-data` fetches and verifies them (here from a `file://`
mirror laid out as GitHub's raw server), and the data tests skip, or fail under PLMKIT_REQUIRE_DATA=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from shared_paths import REPO, require_data

GET_DATA = REPO / "scripts" / "get-data"
SOURCES = json.loads((REPO / "scripts" / "data-sources.json").read_text())["files"]


def _mirror(tmp: Path, wanted: tuple[str, ...]) -> Path:
    """Copy the shared files under `<repo>/<commit>/<path>`, as raw.githubusercontent.com serves them."""
    mirror = tmp / "mirror"
    for entry in SOURCES:
        if entry["file"].startswith(wanted):
            target = mirror / entry["repo"] / entry["commit"] / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(require_data(*entry["file"].split("/")), target)
    return mirror


def _get(dest: Path, mirror: Path, *only: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(GET_DATA), str(dest), "--base-url", mirror.as_uri(), "--only", *only]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_every_shared_file_has_a_source_and_a_sum() -> None:
    sums = {}
    for line in require_data("SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    data_files = {name for name in sums if not name.endswith(".md")}
    assert {e["file"]: e["sha256"] for e in SOURCES} == {name: sums[name] for name in data_files}


def test_get_data_downloads_and_verifies_from_a_mirror(tmp_path: Path) -> None:
    mirror = _mirror(tmp_path, ("sst2/", "tokenizers/gpt2/"))
    done = _get(tmp_path / "data", mirror, "sst2", "tokenizers/gpt2")
    assert done.returncode == 0, done.stderr
    names = ("sst2/train.tsv", "sst2/dev.tsv", "tokenizers/gpt2/vocab.json", "tokenizers/gpt2/merges.txt")
    for name in names:
        assert (tmp_path / "data" / name).read_bytes() == require_data(*name.split("/")).read_bytes()
    assert "4 files verified" in done.stdout
    again = _get(tmp_path / "data", mirror, "sst2")  # present and correct: kept, nothing fetched
    assert again.returncode == 0 and again.stdout.count("ok        sst2/") == 2


def test_get_data_refuses_a_file_whose_sum_does_not_match(tmp_path: Path) -> None:
    mirror = _mirror(tmp_path, ("sst2/",))
    entry = next(e for e in SOURCES if e["file"] == "sst2/dev.tsv")
    tampered = mirror / entry["repo"] / entry["commit"] / entry["path"]
    tampered.write_bytes(tampered.read_bytes().replace(b"\t1\n", b"\t0\n", 1))
    done = _get(tmp_path / "data", mirror, "sst2")
    assert done.returncode == 1
    assert "sst2/dev.tsv: sha256" in done.stderr and "does not match the recorded" in done.stderr
    assert not (tmp_path / "data" / "sst2" / "dev.tsv").exists()
    assert (tmp_path / "data" / "sst2" / "train.tsv").is_file()
    assert sorted(p.name for p in (tmp_path / "data" / "sst2").iterdir()) == ["train.tsv"]  # no temporaries


SMALL_DATA_TEST = '''
from shared_paths import require_data

def test_reads_sst2():
    assert require_data("sst2", "dev.tsv").read_text().startswith("sentence")
'''


def _pytest_without_data(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess:
    # the suite's own conftest beside a one-test file, outside the repository's tests/
    shutil.copyfile(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    shutil.copyfile(REPO / "tests" / "shared_paths.py", tmp_path / "shared_paths.py")
    test = tmp_path / "test_reads_data.py"
    test.write_text(SMALL_DATA_TEST)
    env = {**os.environ, "PLMKIT_DATA": str(tmp_path / "empty")}
    env.pop("PLMKIT_REQUIRE_DATA", None)
    if require is not None:
        env["PLMKIT_REQUIRE_DATA"] = require
    (tmp_path / "empty").mkdir()
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:xdist", "-p", "no:cacheprovider",
               "--rootdir", str(tmp_path), str(test)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def test_without_data_the_test_is_skipped_with_how_to_get_it(tmp_path: Path) -> None:
    done = _pytest_without_data(tmp_path, None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout
    assert f"shared dataset {tmp_path / 'empty' / 'sst2' / 'dev.tsv'} not found" in done.stdout
    assert "run `scripts/get-data" in done.stdout


def test_require_data_turns_the_skip_into_a_failure(tmp_path: Path) -> None:
    done = _pytest_without_data(tmp_path, "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed" in done.stdout
    assert "not found: run `scripts/get-data" in done.stdout and "(PLMKIT_REQUIRE_DATA=1)" in done.stdout
