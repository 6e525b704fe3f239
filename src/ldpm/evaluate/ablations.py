"""LDPM's own evaluation: Table II (ablations) and Fig 3 (MR-VAE vs the natural-image VAE).

Fig 3 runs each VAE as an autoencoder (posterior mode → decoder) on the test images of the main split and reports
PSNR / SSIM with the fastMRI protocol (per volume, data range = volume max, averaged over volumes), as the tables
do. The paper's third Fig 3 metric, rFID, is not computed here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ldpm.evaluate import protocol  # noqa: E402
from ldpm.evaluate.figures import _show, pick_examples  # noqa: E402
from ldpm.evaluate.metrics import image_metrics  # noqa: E402
from ldpm.evaluate.tables import METHOD_LABELS, seed_averaged, select, write_table_formats  # noqa: E402
from ldpm.io import atomic_output, read_images, read_table, write_table  # noqa: E402

log = logging.getLogger("ldpm.ablations")

# Table I's labels (LDPM and the beyond-paper variants) plus the ablations'
ABLATION_LABELS = METHOD_LABELS | {"ldpm_no_mrvae": "LDPM (w/o MR-VAE)", "ldpm_no_skm": "LDPM (w/o SkM)",
                                   "ldpm_no_dss": "LDPM (w/o DSS)"}
ABLATION_MODES = {"swap": "each ablation runs the full model's MRCN with the part removed",
                  "retrain": "w/o MR-VAE and w/o SkM run an MRCN retrained without that part"}
# The ablations are not tuned on their own: each removes one part of the tuned full model and changes nothing else.
SAMPLER_NOTE = ("every row samples with LDPM's sampler settings, including the values its validation tuning chose "
                "when ldpm.tuning has a grid")


def table2(volumes: pd.DataFrame, methods: list[str], split_filter: dict, split_name: str, acceleration: int,
           stem: str | Path, mode: str = "swap", mask_type: str = "random") -> pd.DataFrame:
    """Mean PSNR / SSIM over the test volumes of the main split, one row per ablation in `methods` order
    (each volume's values averaged over the training seeds first)."""
    frame = select(seed_averaged(volumes[volumes.acceleration == acceleration]), split_filter, split_name)
    table = frame.groupby("method")[["psnr", "ssim"]].mean().reindex([m for m in methods if m in set(frame.method)])
    table["volumes"] = frame.groupby("method").size()
    table.index = [ABLATION_LABELS.get(m, m) for m in table.index]
    table.columns = ["PSNR", "SSIM", "volumes"]
    write_table_formats(table, stem, f"Table II: ablations of LDPM, AF {acceleration}, {mask_type} masks "
                                     f"(mean over the '{split_name}' test volumes, fastMRI protocol; ablation mode "
                                     f"'{mode}': {ABLATION_MODES[mode]}; {SAMPLER_NOTE})")
    return table


@torch.no_grad()
def autoencode(vae, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, H, W) images in [0, 1] → VAE reconstructions D(E(x)) (posterior mode), clipped as every method's output
    (`ldpm.physics.clip_output`: negatives to 0, no upper clip)."""
    from ldpm.models.latent import decode, encode
    from ldpm.physics import clip_output

    out = [clip_output(decode(vae, encode(vae, torch.from_numpy(chunk)[:, None])))[:, 0].numpy()
           for chunk in np.array_split(images, max(1, int(np.ceil(len(images) / batch_size))))]
    return np.concatenate(out)


def figure3(test_h5: str | Path, test_csv: str | Path, weights: dict[str, str], hp: dict, out_png: str | Path,
            out_csv: str | Path, *, split_filter: dict, split_name: str = "main", n_examples: int = 2,
            zoom: float = 0.25, error_scale: float = 0.2) -> pd.DataFrame:
    """Fig 3: GT | natural-image VAE recon | its error | MR-VAE recon | its error, zoomed insets; the metrics over
    the whole main test split in the title and in `out_csv`."""
    from ldpm.method.components import load_vae, pretrained_vae

    gt_all = read_images(test_h5)
    meta = read_table(test_csv)
    rows = select(meta, split_filter, split_name).index.to_numpy()
    vaes = {"natural-image VAE" if not hp.get("sd_dir") else "SD-VAE": pretrained_vae(weights, hp).eval(),
            "MR-VAE": load_vae(weights["mrvae"], hp)}
    recons = {name: np.zeros_like(gt_all) for name in vaes}
    for name, vae in vaes.items():
        recons[name][rows] = autoencode(vae, gt_all[rows])
    records = []
    for name, recon in recons.items():
        per_volume = [image_metrics(gt_all[idx], recon[idx]) for _, idx in
                      meta.loc[rows].groupby("volume").groups.items()]
        records.append({"vae": name, "psnr": np.mean([m["psnr"] for m in per_volume]),
                        "ssim": np.mean([m["ssim"] for m in per_volume]), "volumes": len(per_volume),
                        "slices": len(rows)})
        log.info("%s: PSNR %.3f SSIM %.4f over %d volumes", name, records[-1]["psnr"], records[-1]["ssim"],
                 len(per_volume))
    metrics = pd.DataFrame(records)
    write_table(metrics, out_csv)

    picks = pick_examples(test_csv, n_examples, split_filter)
    # constrained layout keeps each row's two-line titles clear of the row above
    fig, axes = plt.subplots(len(picks), 1 + 2 * len(vaes), figsize=(2.0 * (1 + 2 * len(vaes)), 2.5 * len(picks) + 0.4),
                             squeeze=False, layout="constrained")
    for row, idx in enumerate(picks):
        gt = gt_all[idx]
        vmax = float(gt_all[meta.index[meta.volume == meta.volume[idx]]].max())
        h, w = gt.shape
        size = max(4, int(zoom * h))
        box = (h // 2 - size // 2, w // 2 - size // 2, size)
        _show(axes[row, 0], gt, vmax, box, f"GT\n{meta.acquisition[idx]}, {meta.field_strength[idx]} T")
        for col, (name, recon) in enumerate(recons.items()):
            title = f"{name}\n{protocol.psnr(gt, recon[idx], vmax):.2f} dB"
            _show(axes[row, 1 + 2 * col], recon[idx], vmax, box, title)
            _show(axes[row, 2 + 2 * col], np.abs(recon[idx] - gt), error_scale * vmax, box, f"error {name}",
                  cmap="inferno")
    summary = "; ".join(f"{r.vae}: PSNR {r.psnr:.2f} dB, SSIM {r.ssim:.4f}" for r in metrics.itertuples())
    fig.suptitle(f"VAE reconstructions D(E(x)) over {len(rows)} test slices ({metrics.volumes[0]} volumes): "
                 f"{summary}\nerror maps |recon − GT| (0–{error_scale:.0%} of the volume max); rFID not computed",
                 fontsize=7)
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=130, format=Path(out_png).suffix.lstrip(".") or "png")
    plt.close(fig)
    return metrics
