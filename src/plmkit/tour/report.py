"""Write the tour's report: report.md (+ plots/*.png), a self-contained report.html, and metrics.json."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plmkit.io import write_text
from plmkit.tour.common import Result

VERDICT = {True: "supports the claim", False: "does NOT support the claim", None: "no verdict"}
VERDICT_CLASS = {True: "yes", False: "no", None: "none"}  # the CSS class that colours a verdict
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
h1 { border-bottom: 2px solid #444; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .8rem 0; }
td, th { border: 1px solid #bbb; padding: .25rem .6rem; }
th { background: #f0f0f0; }
.yes { color: #1a7f37; font-weight: bold; }
.no { color: #c62828; font-weight: bold; }
.none { color: #777; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5rem 0; }
table.claims td { vertical-align: top; }
.meta { color: #555; }
.err { color: #c62828; font-family: monospace; }
"""


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def key_number(r: Result) -> str:
    """The opening table's number for `r`: the experiment's own `key`, else the first sentence of its
    result (the report never derives a number of its own)."""
    if r.key:
        return r.key
    first = re.match(r"(.+?[.!?])(?:\s|$)", r.result, re.S)
    return (first.group(1) if first else r.result).strip()


def _anchors(results: Sequence[Result]) -> list[str]:
    """One stable, unique HTML id per section, from the experiment's NAME."""
    out: list[str] = []
    for r in results:
        base = re.sub(r"[^A-Za-z0-9_-]+", "-", r.name).strip("-") or "experiment"
        anchor, n = base, 1
        while anchor in out:
            n += 1
            anchor = f"{base}-{n}"
        out.append(anchor)
    return out


def _md_cell(text: str) -> str:
    # A pipe or a newline would end the markdown cell, and "<...>" would be read as HTML.
    text = html.escape(re.sub(r"\s*\n\s*", " ", text), quote=False)
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _opening_table(results: Sequence[Result], anchors: Sequence[str]) -> tuple[list[str], str]:
    """Every claim, its verdict and its key number, each row linking to its section: (markdown, html)."""
    md = ["| experiment | claim | verdict | key number |", "|---|---|---|---|"]
    rows = []
    for r, anchor in zip(results, anchors):
        cls = VERDICT_CLASS[r.supported]
        number = f"failed: {r.error}" if r.error else key_number(r)
        title = _md_cell(r.title).replace("[", "\\[").replace("]", "\\]")
        md.append(
            f"| [{title}](#{anchor}) | {_md_cell(r.claim)} | {VERDICT[r.supported]} | {_md_cell(number)} |"
        )
        number_html = (
            f"<span class='err'>{html.escape(number)}</span>" if r.error else html.escape(number)
        )
        rows.append(
            f"<tr><td><a href='#{html.escape(anchor)}'>{html.escape(r.title)}</a></td>"
            f"<td>{html.escape(r.claim)}</td><td class='{cls}'>{html.escape(VERDICT[r.supported])}</td>"
            f"<td>{number_html}</td></tr>"
        )
    page = (
        "<table class='claims'><tr><th>experiment</th><th>claim</th><th>verdict</th><th>key number</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return md, page


def _md_table_to_html(md: str) -> str:
    lines = [line.strip().strip("|").split("|") for line in md.strip().splitlines()]
    header, rows = lines[0], lines[2:]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in header) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in rows]
    return "".join(out) + "</table>"


def write_report(results: Sequence[Result], out: str | Path, meta: dict[str, Any]) -> dict[str, Path]:
    out = Path(out)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    supported = sum(r.supported is True for r in results)
    summary = (
        f"{len(results)} experiments: {supported} support their claim, "
        f"{sum(r.supported is False for r in results)} do not, "
        f"{sum(r.supported is None for r in results)} without a verdict."
    )
    head = (
        f"seed {meta['seed']}, {'quick' if meta['quick'] else 'full'} run on {meta['device']}, "
        f"{meta['seconds']:.0f}s in total, plmkit {meta['version']}"
    )
    anchors = _anchors(results)
    table_md, table_html = _opening_table(results, anchors)
    md = ["# plmkit tour report", "", head, "", summary, "", *table_md, ""]
    body = [
        f"<h1>plmkit tour report</h1><p class='meta'>{html.escape(head)}</p><p>{html.escape(summary)}</p>"
        + table_html
    ]
    for r, anchor in zip(results, anchors):
        cls = VERDICT_CLASS[r.supported]
        md += [
            f'<a id="{anchor}"></a>',
            "",
            f"## {r.title}",
            "",
            f"**Claim.** {r.claim}",
            "",
            f"**Setup.** {r.setup}",
            "",
            f"**Result.** {r.result}",
            "",
            f"**Verdict.** The result {VERDICT[r.supported]}. ({r.seconds:.0f}s)",
            "",
        ]
        body.append(
            f"<h2 id='{html.escape(anchor)}'>{html.escape(r.title)}</h2>"
            f"<p><b>Claim.</b> {html.escape(r.claim)}</p><p><b>Setup.</b> {html.escape(r.setup)}</p>"
            f"<p><b>Result.</b> {html.escape(r.result)}</p>"
            f"<p><b>Verdict.</b> <span class='{cls}'>The result {VERDICT[r.supported]}.</span> "
            f"({r.seconds:.0f}s)</p>"
        )
        if r.error:
            md += [f"Error: `{r.error}`", ""]
            body.append(f"<p class='err'>{html.escape(r.error)}</p>")
        for t in r.tables:
            md += [t, ""]
            body.append(_md_table_to_html(t))
        for stem, png in r.plots.items():
            (plots_dir / f"{stem}.png").write_bytes(png)
            md += [f"![{stem}](plots/{stem}.png)", ""]
            b64 = base64.b64encode(png).decode("ascii")
            body.append(f"<img alt='{html.escape(stem)}' src='data:image/png;base64,{b64}'>")
    paths = {"md": out / "report.md", "html": out / "report.html", "json": out / "metrics.json"}
    write_text(paths["md"], "\n".join(md))  # atomic: a killed tour leaves the previous report whole
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>plmkit tour report</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    write_text(paths["html"], page)
    metrics = {
        "meta": meta,
        "experiments": {
            r.name: {
                "title": r.title,
                "supported": r.supported,
                "result": r.result,
                "key": key_number(r),
                "seconds": r.seconds,
                "error": r.error,
                "metrics": r.metrics,
            }
            for r in results
        },
    }
    write_text(paths["json"], json.dumps(_json_safe(metrics), indent=2))
    return paths
