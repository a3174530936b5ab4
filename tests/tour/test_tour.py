import json

from plmkit.cli import main
from plmkit.tour import EXPERIMENTS, experiment_names
from plmkit.tour.common import Result, table
from plmkit.tour.report import write_report


def test_every_experiment_module_declares_itself():
    from plmkit.tour import experiment_modules

    names = experiment_names()
    assert len(names) == len(set(names)) == len(EXPERIMENTS)
    for module in experiment_modules():
        assert module.NAME in names and module.TITLE and module.CLAIM and callable(module.run)


def test_report_is_self_contained_and_says_when_a_claim_fails(tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 20
    results = [
        Result(
            "a",
            "A title",
            "claim a",
            "setup a",
            "result a",
            True,
            {"x": 1.0},
            [table(["k", "v"], [[1, 0.5]])],
            {"plot_a": png},
        ),
        Result("b", "B title", "claim b", "setup b", "result b", False, {"y": float("nan")}),
        Result("c", "C title", "claim c", "", "the experiment failed", None, error="RuntimeError: boom"),
    ]
    paths = write_report(
        results, tmp_path, {"seed": 0, "quick": True, "device": "cpu", "seconds": 1.0, "version": "0"}
    )
    page = paths["html"].read_text()
    assert "data:image/png;base64,iVBORw0KGgo" in page and "src='plots" not in page
    assert "does NOT support the claim" in page and "RuntimeError: boom" in page
    assert "<td>0.500</td>" in page
    md = paths["md"].read_text()
    assert "![plot_a](plots/plot_a.png)" in md and (tmp_path / "plots" / "plot_a.png").read_bytes() == png
    metrics = json.loads(paths["json"].read_text())
    assert metrics["experiments"]["b"]["supported"] is False
    assert metrics["experiments"]["b"]["metrics"]["y"] is None  # NaN is not JSON


def test_only_rejects_unknown_experiment_names(capsys):
    assert main(["tour", "--only", "pretrainign"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'pretrainign'" in err and "did you mean 'pretraining'" in err


def test_quick_tour_reports_every_experiment(tmp_path, capsys):
    out = tmp_path / "tour"
    assert main(["tour", "--quick", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["experiments"]) == experiment_names()
    for name, exp in metrics["experiments"].items():
        assert exp["error"] is None, f"{name}: {exp['error']}"
        assert exp["supported"] in (True, False), name
        assert exp["result"] and exp["metrics"], name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3
    assert (out / "report.md").read_text().startswith("# plmkit tour report")
