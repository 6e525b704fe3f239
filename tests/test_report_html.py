"""results/report.html read as a browser reads it (stdlib html.parser): tables whose rows all have their header's
number of cells and no markdown left in a cell, every image an inlined PNG, and a run summary that names the config
file and the wall time. The page is built here from small fixture inputs (no pipeline run).

`python tests/test_report_html.py results/report.html` runs the same checks on a finished run's page."""

from __future__ import annotations

import base64
import io
import os
import re
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARKDOWN_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|.*)?$")  # a `|---|:--:|` line, or one cell of it


class Page(HTMLParser):
    """Tables (header rows, rows of cell texts), image sources, paragraph texts and the run summary's text."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self.images, self.paragraphs, self.summary = [], [], [], ""
        self._tables, self._cell, self._paragraph, self._in_thead, self._summary_depth = [], None, None, False, 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self._summary_depth and tag == "section":
            self._summary_depth += 1
        elif attrs.get("id") == "summary":
            self._summary_depth = 1
        if tag == "table":
            self._tables.append({"head_rows": 0, "rows": []})
        elif tag == "thead":
            self._in_thead = True
        elif tag == "tr" and self._tables:
            self._tables[-1]["rows"].append([])
            self._tables[-1]["head_rows"] += self._in_thead
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "p":
            self._paragraph = ""
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "section" and self._summary_depth:
            self._summary_depth -= 1
        if tag == "table" and self._tables:
            self.tables.append(self._tables.pop())
        elif tag == "thead":
            self._in_thead = False
        elif tag in ("td", "th") and self._cell is not None and self._tables:
            self._tables[-1]["rows"][-1].append(self._cell.strip())
            self._cell = None
        elif tag == "p" and self._paragraph is not None:
            self.paragraphs.append(self._paragraph.strip())
            self._paragraph = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._paragraph is not None:
            self._paragraph += data
        if self._summary_depth:
            self.summary += data


def page_problems(text: str) -> list[str]:
    """What a reader would see broken on the page; empty when it reads right."""
    page, problems = Page(text), []
    for i, table in enumerate(page.tables):
        header = table["rows"][0] if table["rows"] else []
        if table["head_rows"] != 1:
            problems.append(f"table {i} ({header[:3]}): {table['head_rows']} header rows, not 1")
        for row in table["rows"]:
            if len(row) != len(header):
                problems.append(f"table {i} ({header[:3]}): row {row[:3]} has {len(row)} cells, header {len(header)}")
            for cell in row:
                if re.search(r"\s\|\s", cell) or MARKDOWN_RULE.match(cell) or "**" in cell:
                    problems.append(f"table {i}: cell {cell[:60]!r} holds markdown table syntax")
    problems += [f"paragraph {p[:60]!r} is a markdown table row" for p in page.paragraphs if p.startswith("|")]
    if not page.images:
        problems.append("no image")
    for src in page.images:
        problems += [f"image {src[:40]!r}: {why}" for why in png_problems(src)]
    return problems


def png_problems(src: str) -> list[str]:
    prefix = "data:image/png;base64,"
    if not src.startswith(prefix):
        return ["not an inlined data:image/png URI"]
    try:
        data = base64.b64decode(src[len(prefix):], validate=True)
    except ValueError as exc:
        return [f"base64 does not decode: {exc}"]
    if not data.startswith(PNG_SIGNATURE):
        return ["decoded bytes lack the PNG signature"]
    from PIL import Image

    try:
        Image.open(io.BytesIO(data)).verify()
    except Exception as exc:  # noqa: BLE001 - any decoder error means a broken image
        return [f"PIL cannot read it: {exc}"]
    return []


# ---------------------------------------------------------------------------------------------- fixture page

DIAGNOSTICS_ROW = r"sketch \|DC(R(x_u))\|"  # as the .md writes it; the page must show "sketch |DC(R(x_u))|"


def write_inputs(tmp_path):
    """Small inputs of every kind the report reads; returns the `ldpm report` argument list."""
    import matplotlib.pyplot as plt

    from ldpm.evaluate.figures import forest_plot
    from ldpm.evaluate.stats import stats_table
    from ldpm.evaluate.tables import METHOD_LABELS

    rng = np.random.default_rng(0)
    methods = ["zero_filled", "unet", "cs_tv", "my_method", "ldpm"]  # my_method: no label in METHOD_LABELS
    volumes = pd.DataFrame([{"method": m, "acceleration": 8, "dataset": "brain", "patient_id": f"p{s}",
                             "volume": f"v{s}", "psnr": 20 + 2 * i + rng.random(), "ssim": 0.5 + 0.1 * i}
                            for i, m in enumerate(methods) for s in range(6)])
    tables = tmp_path / "tables"
    tables.mkdir()
    stats_table(volumes, methods, {"dataset": "brain"}, 8, tables / "stats_random_af8", n_boot=200)
    forest = tmp_path / "forest_random_af8.png"
    assert forest_plot(tables / "stats_random_af8.csv", forest, protocol_label="AF 8, random masks") == \
        [METHOD_LABELS["zero_filled"], METHOD_LABELS["unet"], METHOD_LABELS.get("cs_tv", "cs_tv"), "my_method"]
    wide = pd.DataFrame(rng.random((2, 27)).round(4), columns=[f"split{k} PSNR" for k in range(27)],
                        index=["zero-filled x_u", DIAGNOSTICS_ROW])
    wide.index.name = "quantity"
    (tables / "ldpm_diagnostics_random_af8.md").write_text(
        f"LDPM diagnostics, AF 8\n\n{wide.to_markdown()}\n\nδ of 'LDPM' …\n")
    (tables / "table1_random_af8.md").write_text("Table I, AF 8\n\n| Method | PSNR |\n|:--|--:|\n| U-Net | 20.10 |\n"
                                                 "| LDPM | **22.56** |\n")
    pd.DataFrame({"vae": ["natural-image VAE", "MR-VAE"], "psnr": [18.8, 26.3]}).to_csv(tables / "fig3_vae.csv",
                                                                                      index=False)
    png = tmp_path / "fig2_random_af8.png"
    plt.imsave(png, np.eye(8))
    (tmp_path / "audit.txt").write_text("results/tables/t1.csv <- metrics")
    splits = []
    for split, n in [("train", 4), ("val", 1), ("test", 2)]:
        rows = [{"slice_id": f"{split}{s}:{k}", "volume": f"{split}{s}", "patient_id": f"{split}p{s}",
                 "dataset": "brain"} for s in range(n) for k in range(3)]
        pd.DataFrame(rows).to_csv(tmp_path / f"{split}.csv", index=False)
        splits.append(str(tmp_path / f"{split}.csv"))
    # two benchmarked jobs: 60 s ending at t0 + 60 and 30 s ending at t0 + 600: span 10 min, 90 s of job time
    bench = tmp_path / "benchmarks"
    (bench / "preprocess").mkdir(parents=True)
    t0 = 1_800_000_000
    for path, seconds, end in [(bench / "train_unet_seed0.tsv", 60, t0 + 60),
                               (bench / "preprocess" / "shard.tsv", 30, t0 + 600)]:
        path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:{seconds}\t80.0\n")
        os.utime(path, (end, end))
    config = tmp_path / "my_config.yaml"
    config.write_text("seed: 0\n")
    return ["report", "--tables", str(tables / "table1_random_af8.md"), str(tables / "stats_random_af8.md"), str(tables / "ldpm_diagnostics_random_af8.md"),
            str(tables / "fig3_vae.csv"), "--figures", str(png), "--texts", str(tmp_path / "audit.txt"),
            "--headline", str(forest), "--stats", str(tables / "stats_random_af8.csv"), "--splits", *splits,
            "--source", "embedded", "--stand-in", "[]", "--config-files", f'["{config}"]', "--seed", "0",
            "--training-seeds", "[0, 1]", "--benchmarks", str(bench), "--out", str(tmp_path / "report.html")]


def test_report_reads_at_a_glance_and_every_table_row_is_whole(tmp_path):
    from ldpm.cli import main

    assert main(write_inputs(tmp_path)) == 0
    text = (tmp_path / "report.html").read_text()
    assert page_problems(text) == []
    page = Page(text)
    # the escaped pipe is a literal one inside its cell
    assert [row[0] for t in page.tables for row in t["rows"] if row[0].startswith("sketch")] == \
        ["sketch |DC(R(x_u))|"]
    assert "<td><b>22.56</b></td>" in text  # Table I's best value in bold
    # summary first, naming the config file and the wall time; then the headline, its statistics table folded
    summary = " ".join(page.summary.split())
    assert str(tmp_path / "my_config.yaml") in summary
    assert "Wall time: 0:10:00 (h:mm:ss): from the first benchmarked job's start to the last one's end (2 jobs" in \
        summary and "Jobs were running for 0:01:30 of it; their seconds add up to 0:01:30" in summary
    assert "train 4 volumes / 4 subjects" in summary and "training seeds 0, 1" in summary
    assert "not comparable with the paper" in summary
    order = [text.index(s) for s in ('id="summary"', 'id="headline"', 'id="forest_random_af8"', "<details>",
                                     'id="stats_random_af8"', "<h2>Tables</h2>", 'id="fig2_random_af8"')]
    assert order == sorted(order)
    assert "no marker can be filled" not in text  # 6 subjects: p can reach 2/64


if __name__ == "__main__":
    found = page_problems(open(sys.argv[1], encoding="utf-8").read())
    summary = " ".join(Page(open(sys.argv[1], encoding="utf-8").read()).summary.split())
    print("\n".join(found) or "no problems")
    print("summary:", summary[:300] or "(none)")
    sys.exit(1 if found or "Wall time" not in summary else 0)
