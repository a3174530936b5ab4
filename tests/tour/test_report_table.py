"""The report's opening table: every claim, its verdict and its key number, each linking to its section."""

import json
import re

from plmkit.tour.common import Result
from plmkit.tour.report import key_number, write_report

META = {"seed": 0, "quick": True, "device": "cpu", "seconds": 1.0, "version": "0"}


def results() -> list[Result]:
    return [
        Result(
            "transfer", "c. Pretrain <then> fine-tune", "Pretraining beats random init & more.", "s",
            "sentiment 58% vs 52%. Tagging 60 vs 35.", True, key="pretrained ahead by +6 points",
        ),
        Result(
            "masking", "e. Masking", "80/10/10 | helps.", "s",
            "reading 68% vs 54% (always [MASK]). Sentiment 84 vs 79.", False,
        ),
        Result(
            "broken", "x. Broken", "claim x", "", "the experiment failed", None,
            error="RuntimeError: bad <tensor> shape",
        ),
    ]


def opening_table(page: str) -> str:
    match = re.search(r"<table class='claims'>.*?</table>", page, re.S)
    assert match, "no opening table"
    return match.group(0)


def test_html_opens_with_one_linked_row_per_experiment(tmp_path):
    paths = write_report(results(), tmp_path, META)
    page = paths["html"].read_text()
    table = opening_table(page)
    # The table comes before the first section.
    assert page.index(table) < page.index("<h2")
    rows = re.findall(r"<tr><td>.*?</tr>", table, re.S)
    assert len(rows) == 3
    links = re.findall(r"<a href='#([^']+)'>", table)
    ids = re.findall(r"<h2 id='([^']+)'>", page)
    assert links == ids == ["transfer", "masking", "broken"]
    verdicts = re.findall(r"<td class='(\w+)'>([^<]*)</td>", table)
    assert verdicts == [
        ("yes", "supports the claim"),
        ("no", "does NOT support the claim"),
        ("none", "no verdict"),
    ]
    # The section verdicts use the same colours.
    assert [c for c, _ in verdicts] == re.findall(r"<b>Verdict.</b> <span class='(\w+)'>", page)


def test_key_number_comes_from_the_experiment_else_the_first_sentence(tmp_path):
    page = write_report(results(), tmp_path, META)["html"].read_text()
    rows = re.findall(r"<tr><td>.*?</tr>", opening_table(page), re.S)
    assert "<td>pretrained ahead by +6 points</td>" in rows[0]
    assert "<td>reading 68% vs 54% (always [MASK]).</td>" in rows[1] and "Sentiment 84" not in rows[1]
    assert "<span class='err'>failed: RuntimeError: bad &lt;tensor&gt; shape</span>" in rows[2]
    assert key_number(Result("n", "t", "c", "s", "no full stop here", None)) == "no full stop here"


def test_everything_in_the_table_is_escaped(tmp_path):
    page = write_report(results(), tmp_path, META)["html"].read_text()
    table = opening_table(page)
    assert "c. Pretrain &lt;then&gt; fine-tune</a>" in table
    assert "Pretraining beats random init &amp; more." in table
    assert "<then>" not in page and "<tensor>" not in page


def test_markdown_has_the_same_table_linking_to_the_headings_anchors(tmp_path):
    md = write_report(results(), tmp_path, META)["md"].read_text()
    lines = md.splitlines()
    start = lines.index("| experiment | claim | verdict | key number |")
    rows = lines[start + 2 : start + 5]
    assert rows[0] == (
        "| [c. Pretrain &lt;then&gt; fine-tune](#transfer) | Pretraining beats random init &amp; more. | "
        "supports the claim | pretrained ahead by +6 points |"
    )
    assert rows[1].startswith(
        "| [e. Masking](#masking) | 80/10/10 \\| helps. | does NOT support the claim | "
    )
    assert rows[2].endswith("| no verdict | failed: RuntimeError: bad &lt;tensor&gt; shape |")
    # Every link has its anchor right above its section's heading, and the table precedes the sections.
    for anchor, title in (("transfer", "c. Pretrain <then> fine-tune"), ("masking", "e. Masking")):
        i = lines.index(f'<a id="{anchor}"></a>')
        assert lines[i + 2] == f"## {title}" and i > start


def test_metrics_json_carries_the_key(tmp_path):
    metrics = json.loads(write_report(results(), tmp_path, META)["json"].read_text())
    keys = {name: e["key"] for name, e in metrics["experiments"].items()}
    assert keys == {
        "transfer": "pretrained ahead by +6 points",
        "masking": "reading 68% vs 54% (always [MASK]).",
        "broken": "the experiment failed",
    }


def test_result_without_key_stays_backwards_compatible():
    positional = Result("a", "t", "c", "s", "r", True, {"x": 1}, [], {}, 2.0, None)
    assert positional.key == "" and positional.seconds == 2.0
