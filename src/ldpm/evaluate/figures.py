"""Figures a person looks at: Fig 2 (example reconstructions with error maps and a zoomed patch)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ldpm.evaluate.metrics import read_recon  # noqa: E402
from ldpm.evaluate.tables import METHOD_LABELS  # noqa: E402
from ldpm.io import atomic_output, read_images, read_table  # noqa: E402


def pick_examples(test_csv: str | Path, n: int, split_filter: dict) -> list[int]:
    """Middle slices of the first n volumes (sorted by name) matching the filter: deterministic, no cherry-picking."""
    meta = read_table(test_csv)
    for column, wanted in split_filter.items():
        meta = meta[meta[column].isin(wanted if isinstance(wanted, list) else [wanted])]
    picks = []
    for _, rows in sorted(meta.groupby("volume"), key=lambda kv: kv[0])[:n]:
        picks.append(int(rows.index[len(rows) // 2]))
    return picks


def figure2(test_h5: str | Path, test_csv: str | Path, recons: dict[str, str | Path], out: str | Path, *,
            split_filter: dict, n_examples: int = 2, zoom: float = 0.25, error_scale: float = 0.2) -> None:
    """Rows per example: images (GT then each method) and error maps |recon − GT|; a zoomed patch inset."""
    gt_all = read_images(test_h5)
    meta = read_table(test_csv)
    recon_all = {m: read_recon(p) for m, p in recons.items()}
    picks = pick_examples(test_csv, n_examples, split_filter)
    columns = ["GT", *recon_all]
    fig, axes = plt.subplots(2 * len(picks), len(columns), figsize=(2.0 * len(columns), 4.1 * len(picks)),
                             squeeze=False)
    for row, idx in enumerate(picks):
        gt = gt_all[idx]
        h, w = gt.shape
        size = max(4, int(zoom * h))
        y0, x0 = h // 2 - size // 2, w // 2 - size // 2
        for col, name in enumerate(columns):
            image = gt if name == "GT" else recon_all[name][idx]
            ax, ax_err = axes[2 * row, col], axes[2 * row + 1, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=gt.max())
            inset = ax.inset_axes([0.62, 0.0, 0.38, 0.38])
            inset.imshow(image[y0:y0 + size, x0:x0 + size], cmap="gray", vmin=0, vmax=gt.max())
            inset.set_xticks([]), inset.set_yticks([])
            ax.add_patch(plt.Rectangle((x0, y0), size, size, fill=False, ec="yellow", lw=0.8))
            label = "GT" if name == "GT" else METHOD_LABELS.get(name, name)
            if name != "GT":
                mse = float(np.mean((image - gt) ** 2))
                label += f"\n{10 * np.log10(gt.max() ** 2 / mse):.2f} dB"
                ax_err.imshow(np.abs(image - gt), cmap="inferno", vmin=0, vmax=error_scale * gt.max())
            else:
                ax_err.text(0.5, 0.5, f"{meta.volume[idx]}\nslice {meta.slice[idx]}\n{meta.acquisition[idx]}, "
                            f"{meta.field_strength[idx]} T", ha="center", va="center", fontsize=7)
            ax.set_title(label, fontsize=8)
            for a in (ax, ax_err):
                a.set_xticks([]), a.set_yticks([])
    fig.suptitle(f"Examples (error maps |recon − GT|, colour range 0–{error_scale:.0%} of the volume max)",
                 fontsize=9)
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=130, format=Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)

