"""`ldpm` command line: one sub-command per pipeline stage. Snakemake rules call these; so can a person.

Config blocks arrive as JSON (`--params '{...}'`) so that a rule passes exactly the keys its stage uses.
Any LdpmError ends the process with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

SPLIT_NAMES = ("train", "val", "test")  # ldpm.data.preprocess.SPLITS, without importing pandas / h5py here


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def _splits(text: str) -> dict:
    """config test_splits as JSON: an object, or a list of [name, filter] pairs (the workflow's form, since its JSON
    params sort object keys and the order of test splits is the order of Table III's columns)."""
    value = _json(text)
    return dict(value) if isinstance(value, list) else value


def cmd_embedded(a: argparse.Namespace) -> None:
    from ldpm.data.embedded import generate_dataset

    generate_dataset(a.out, seed=a.seed, **a.params)


def cmd_index(a: argparse.Namespace) -> None:
    from ldpm.data.preprocess import build_index

    build_index(a.datasets, a.extra_acquisitions, a.out)


def cmd_preprocess(a: argparse.Namespace) -> None:
    from ldpm.data.preprocess import preprocess

    preprocess(a.index, a.out_dir, seed=a.seed, **a.params)


def cmd_split(a: argparse.Namespace) -> None:
    from ldpm.data.preprocess import write_splits

    write_splits(a.index, a.out, seed=a.seed, **a.params)


def cmd_preprocess_shard(a: argparse.Namespace) -> None:
    from ldpm.data.preprocess import preprocess_shard

    preprocess_shard(a.index, a.volumes, a.out_h5, a.out_csv, rows_sha256=a.rows_sha256, **a.params)


def cmd_gather(a: argparse.Namespace) -> None:
    from ldpm.data.preprocess import gather

    gather(a.splits, a.out_dir, tuple(a.split) if a.split else SPLIT_NAMES)


def cmd_masks(a: argparse.Namespace) -> None:
    from ldpm.data.masks import make_test_masks
    from ldpm.io import read_images, read_table

    width = read_images(a.test_h5).shape[-1]
    table = read_table(a.test_csv)
    make_test_masks(table["slice_id"].tolist(), width, a.acceleration, a.center_fraction,
                    a.seed, a.out, mask_type=a.mask_type, out_csv=a.out_csv, per=a.per,
                    volumes=table["volume"].astype(str).tolist() if "volume" in table else None)


def cmd_train(a: argparse.Namespace) -> None:
    """Under `torchrun --nproc_per_node N` every process runs this; ldpm.train handles the data-parallel parts."""
    import torch.distributed as dist

    from ldpm.stages import TRAINERS, resolve
    from ldpm.train import checkpoint_identity, claim_checkpoint_dir, init_distributed, is_main_process

    trainer = resolve(TRAINERS, a.model, "model")
    init_distributed(a.device)
    try:
        if is_main_process():
            claim_checkpoint_dir(a.ckpt_dir, checkpoint_identity(a.model, a.inputs, a.hp, a.masks, a.seed,
                                                                 a.val_slices))
        if dist.is_initialized():
            dist.barrier()  # no process may load a checkpoint that rank 0 is setting aside
        trainer(a.inputs, a.out, a.ckpt_dir, a.hp, a.masks, a.seed, a.device, val_slices=a.val_slices)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def cmd_training_curves(a: argparse.Namespace) -> None:
    from pathlib import Path

    from ldpm.evaluate.figures import training_curves

    training_curves(a.curve, a.out, a.title or Path(a.curve).name.removesuffix(".curve.csv"))


def cmd_reconstruct(a: argparse.Namespace) -> None:
    from ldpm.reconstruct import reconstruct

    reconstruct(a.method, a.test_h5, a.test_csv, a.masks, a.out, weights=a.weights, hp=a.hp,
                batch_size=a.batch_size, device=a.device, seed=a.seed, normalise=a.normalise,
                mask_seed=a.mask_seed, masks_per=a.masks_per, **_protocol(a))


def cmd_metrics(a: argparse.Namespace) -> None:
    from ldpm.evaluate.metrics import evaluate

    evaluate(a.test_h5, a.test_csv, a.recon, a.masks, a.method, a.acceleration, a.out_volumes, a.out_slices,
             training_seed=a.training_seed, measurement=a.measurement)


def _recons(a: argparse.Namespace) -> dict[str, str]:
    from ldpm import LdpmError

    if len(a.methods) != len(a.recon):
        raise LdpmError(f"--methods has {len(a.methods)} names but --recon {len(a.recon)} files; give one per method")
    return dict(zip(a.methods, a.recon))


def cmd_perceptual(a: argparse.Namespace) -> None:
    from ldpm.evaluate.perceptual import load_backbones, perceptual_metrics

    backbones = load_backbones(a.weights_dir, a.use_hub_cache)
    perceptual_metrics(a.test_h5, a.test_csv, _recons(a), a.split_filter, backbones, a.out,
                       split_name=a.split_name, device=a.device, seed=a.seed, training_seed=a.training_seed)


def cmd_tables(a: argparse.Namespace) -> None:
    from pathlib import Path

    import pandas as pd

    from ldpm.evaluate.tables import compute_table, load_volume_metrics, table1, table3
    from ldpm.io import read_table

    volumes = load_volume_metrics(a.metrics)
    perceptual = pd.concat([read_table(p) for p in a.perceptual]) if a.perceptual else None
    out = Path(a.out_dir)
    tag = f"{a.measurement}_{a.mask_type}_af{a.acceleration}"  # the {measurement}_{mask}_af{af} of the file names
    table1(volumes, a.methods, a.test_splits[a.main_split], a.acceleration, out / f"table1_{tag}", perceptual,
           a.notes, mask_type=a.mask_type, normalise=a.normalise, mask_per=a.mask_per)
    table3(volumes, a.methods, a.test_splits, a.acceleration, out / f"table3_{tag}", mask_type=a.mask_type,
           mask_per=a.mask_per)
    if a.recon:
        compute_table(a.recon, a.methods, a.acceleration, out / f"compute_{tag}", mask_type=a.mask_type)


def cmd_stats(a: argparse.Namespace) -> None:
    from ldpm.evaluate.stats import stats_table
    from ldpm.evaluate.tables import load_volume_metrics

    stats_table(load_volume_metrics(a.metrics), a.methods, a.split_filter, a.acceleration, a.out_stem,
                n_boot=a.n_boot, confidence=a.confidence, seed=a.seed, mask_type=a.mask_type)


def cmd_gap(a: argparse.Namespace) -> None:
    from ldpm.evaluate.gap import protocol_gap

    protocol_gap(a.metrics, {"magnitude": a.stats_magnitude, "multicoil": a.stats_multicoil}, a.methods,
                 a.split_filter, a.out_stem, mask_type=a.mask_type, acceleration=a.acceleration, n_boot=a.n_boot,
                 confidence=a.confidence, seed=a.seed, out_png=a.out_png)


def cmd_figure2(a: argparse.Namespace) -> None:
    from ldpm.evaluate.figures import figure2

    figure2(a.test_h5, a.test_csv, _recons(a), a.out, zero_filled=a.zero_filled, split_filter=a.split_filter,
            n_examples=a.n_examples)


def cmd_table2(a: argparse.Namespace) -> None:
    from ldpm.evaluate.ablations import table2
    from ldpm.evaluate.tables import load_volume_metrics

    table2(load_volume_metrics(a.metrics), a.methods, a.split_filter, a.split_name, a.acceleration, a.out_stem,
           mode=a.mode, mask_type=a.mask_type)


def cmd_tune_sampler(a: argparse.Namespace) -> None:
    from ldpm.method.tuning import tune_sampler

    tune_sampler(a.val_h5, a.val_csv, a.weights, a.hp, a.acceleration, a.center_fraction, a.seed, a.out_json,
                 a.out_csv, device=a.device, mask_type=a.mask_type, normalise=a.normalise, **_protocol(a))


def cmd_tune_cs(a: argparse.Namespace) -> None:
    from ldpm.baselines.cs import tune_cs

    tune_cs(a.method, a.val_h5, a.val_csv, a.hp, a.acceleration, a.center_fraction, a.seed, a.out_json, a.out_csv,
            mask_type=a.mask_type, normalise=a.normalise, **_protocol(a))


def _protocol(a: argparse.Namespace) -> dict:
    """The measurement arguments (`_measurement_args`) as keyword arguments."""
    return {"measurement": a.measurement, "index_csvs": a.index, "crop_size": a.crop_size}


def cmd_ldpm_diagnostics(a: argparse.Namespace) -> None:
    from ldpm.method.diagnostics import ldpm_diagnostics

    ldpm_diagnostics(a.test_h5, a.test_csv, a.masks, a.recon, a.weights, a.hp, a.test_splits, a.acceleration,
                     a.seed, a.out_stem, device=a.device, mask_type=a.mask_type, normalise=a.normalise)


def cmd_figure3(a: argparse.Namespace) -> None:
    from ldpm.evaluate.ablations import figure3

    figure3(a.test_h5, a.test_csv, a.weights, a.hp, a.out, a.out_csv, split_filter=a.split_filter,
            split_name=a.split_name)


def cmd_audit(a: argparse.Namespace) -> None:
    from ldpm.evaluate.tables import METHOD_LABELS
    from ldpm.provenance import audit

    method = {v: k for k, v in METHOD_LABELS.items()}.get(a.method, a.method)
    text = "\n".join(audit(a.paths, method=method, max_raw=a.max_raw, verify_raw=a.verify_raw)) + "\n"
    if a.out:
        from ldpm.io import atomic_output

        with atomic_output(a.out) as tmp:
            tmp.write_text(text)
    else:
        print(text, end="")


def cmd_weights(a: argparse.Namespace) -> None:
    from ldpm.evaluate.perceptual import WEIGHTS, fetch_weights, find_weight, is_stand_in, missing_note

    if a.action == "fetch":
        for path in fetch_weights(a.dir):
            print(f"{path}: ok")
        return
    for key, spec in WEIGHTS.items():
        path = find_weight(key, a.dir)
        state = "STAND-IN: random weights of `ldpm rehearsal-inputs`" if path and is_stand_in(path) else "sha256 ok"
        print(f"{spec.metrics}: {path} ({state})" if path else missing_note(key, a.dir))


def cmd_rehearsal_inputs(a: argparse.Namespace) -> None:
    from ldpm.rehearsal import generate

    generate(a.out, profile=a.profile, seed=a.seed)


def cmd_report(a: argparse.Namespace) -> None:
    from ldpm.evaluate.report import write_report

    from ldpm.evaluate.report import data_section

    data_html = (data_section(a.splits, a.source, a.table3, a.main_split, a.ood_splits) if a.splits else "")
    summary = {"config_files": a.config_files, "source": a.source, "split_csvs": a.splits, "seed": a.seed,
               "training_seeds": a.training_seeds, "benchmarks": a.benchmarks}
    write_report(a.tables, a.figures, a.texts, a.out, data_html=data_html, stand_in=a.stand_in, summary=summary,
                 headline=a.headline, stats_csvs=a.stats)


def cmd_forest_plot(a: argparse.Namespace) -> None:
    from ldpm.evaluate.figures import forest_plot

    forest_plot(a.stats, a.out, protocol_label=f"{a.measurement} measurement, AF {a.acceleration}, {a.mask_type} masks",
                confidence=a.confidence)


def _statistics_args(s: argparse.ArgumentParser) -> None:
    """The arguments `stats` and `gap` share: methods, test split, protocol, bootstrap."""
    s.add_argument("--methods", type=_json, required=True)
    s.add_argument("--split-filter", type=_json, default={})
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--mask-type", choices=["random", "equispaced"], default="random",
                   help="config masks.types value (file names, captions)")
    s.add_argument("--n-boot", type=int, default=2000)
    s.add_argument("--confidence", type=float, default=0.95)
    s.add_argument("--seed", type=int, default=0)


def _measurement_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--measurement", default="magnitude", help="magnitude (the paper's) | multicoil (raw coil k-space)")
    s.add_argument("--index", nargs="*", default=[], help="multicoil: the index files (volume -> raw file)")
    s.add_argument("--crop-size", type=int, default=None, help="multicoil: data.crop_size (default: the image size)")


def _normalise_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--normalise", choices=["gt_max", "input"], default="gt_max",
                   help="config data.normalise: the measurement as stored (divided by the ground-truth volume max, "
                   "the paper's protocol) or divided by each zero-filled slice's max, output scaled back")


def _test_set_args(s: argparse.ArgumentParser, per_method: bool = False) -> None:
    """The preprocessed test set; with per_method, one reconstruction file per method too."""
    s.add_argument("--test-h5", required=True)
    s.add_argument("--test-csv", required=True)
    if per_method:
        s.add_argument("--methods", nargs="+", required=True)
        s.add_argument("--recon", nargs="+", required=True, help="one file per method, same order")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ldpm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("embedded-data", help="generate the embedded fastMRI-format dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--params", type=_json, required=True, help="data.embedded config block")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_embedded)

    s = sub.add_parser("index", help="index raw volumes (header facts, sha256)")
    s.add_argument("--datasets", type=_json, required=True, help="{name: {role, paths}}")
    s.add_argument("--extra-acquisitions", type=_json, default=[])
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("preprocess", help="RSS, crop, slice filter, resize, normalise, subject-level splits: "
                       "split + every shard + gather in one process")
    s.add_argument("--index", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--params", type=_json, required=True, help="crop_size, image_size, drop_last_slices, "
                   "val_fraction, test_fraction[, shard_size]")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_preprocess)

    s = sub.add_parser("split", help="splits.csv: subject-level split and shard of every indexed volume")
    s.add_argument("--index", required=True, nargs="+", help="index.csv, or one index file per dataset in order")
    s.add_argument("--params", type=_json, required=True, help="val_fraction, test_fraction, shard_size")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_split)

    s = sub.add_parser("preprocess-shard", help="RSS, crop, slice filter, resize, normalise the volumes of one shard")
    s.add_argument("--index", required=True)
    s.add_argument("--volumes", type=_json, required=True, help="JSON list of volume names (index order)")
    s.add_argument("--rows-sha256", help="sha256 of those index rows the shard was planned from (checked)")
    s.add_argument("--params", type=_json, required=True, help="crop_size, image_size, drop_last_slices")
    s.add_argument("--out-h5", required=True)
    s.add_argument("--out-csv", required=True)
    s.set_defaults(func=cmd_preprocess_shard)

    s = sub.add_parser("gather", help="{train,val,test}.{h5,csv} from splits.csv and the shards/ beside it")
    s.add_argument("--splits", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--split", action="append", choices=SPLIT_NAMES,
                   help="write only this split's files (repeatable; default: all three)")
    s.set_defaults(func=cmd_gather)

    s = sub.add_parser("masks", help="fixed, seeded test masks for one acceleration")
    _test_set_args(s)
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--mask-type", choices=["random", "equispaced"], default="random",
                   help="config masks.types value (file names, captions)")
    s.add_argument("--out-csv", help="real acceleration of every mask (CSV)")
    s.add_argument("--per", choices=["slice", "volume"], default="slice",
                   help="config masks.per: one mask per test slice, or one per volume (fastMRI's protocol)")
    s.add_argument("--center-fraction", type=float, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_masks)

    s = sub.add_parser("train", help="train one model")
    s.add_argument("model", help="a key of ldpm.stages.TRAINERS")
    s.add_argument("--inputs", type=_json, required=True, help='{name: file}, e.g. {"train": "train.h5"}')
    s.add_argument("--out", required=True, help="final weights (.safetensors)")
    s.add_argument("--ckpt-dir", required=True, help="resumable checkpoints")
    s.add_argument("--hp", type=_json, required=True)
    s.add_argument("--masks", type=_json, required=True, help="{accelerations, center_fractions[, type, normalise]}: "
                   "the measurement training simulates (normalise: config data.normalise, default gt_max)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--val-slices", type=int, default=32,
                   help="validation slices scored every epoch (config key validation_slices; 0 = none)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("training-curves", help="training-curve figure of one stage from its <model>.curve.csv")
    s.add_argument("--curve", required=True, help="the stage's curve CSV (step, epoch, name, value)")
    s.add_argument("--title", default=None, help="figure title (default: the CSV's name)")
    s.add_argument("--out", required=True, help="figure (.png)")
    s.set_defaults(func=cmd_training_curves)

    s = sub.add_parser("reconstruct", help="reconstruct the test set with one method")
    s.add_argument("method")
    _test_set_args(s)
    s.add_argument("--masks", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--weights", type=_json, default={}, help="{name: file} of the method's weights")
    s.add_argument("--hp", type=_json, default={})
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    _normalise_arg(s)
    _measurement_args(s)
    s.add_argument("--mask-seed", type=int, default=0,
                   help="multicoil: the test masks' seed (config seed), to draw a slice's mask at its raw width")
    s.add_argument("--masks-per", default="slice", help="multicoil: config masks.per, as the test masks were drawn")
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("metrics", help="per-volume and per-slice PSNR/SSIM/NMSE/HFEN/k-space residual")
    _test_set_args(s)
    s.add_argument("--recon", required=True)
    s.add_argument("--masks", required=True, help="the test masks the reconstruction used (k-space residual)")
    s.add_argument("--method", required=True)
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--training-seed", type=int, default=0, help="the training seed of the reconstruction (a column)")
    s.add_argument("--out-volumes", required=True)
    s.add_argument("--out-slices", required=True)
    s.add_argument("--measurement", default="magnitude", help="the measurement protocol (a column)")
    s.set_defaults(func=cmd_metrics)

    s = sub.add_parser("perceptual", help="LPIPS, rFID, KID per method from local backbone weights (else n/a)")
    _test_set_args(s, per_method=True)
    s.add_argument("--split-filter", type=_json, default={})
    s.add_argument("--split-name", default="main")
    s.add_argument("--weights-dir", default="weights")
    s.add_argument("--no-hub-cache", dest="use_hub_cache", action="store_false",
                   help="look only in --weights-dir, not in the torch hub cache")
    s.add_argument("--training-seed", type=int, default=0, help="the training seed of the reconstructions (a column)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_perceptual)

    s = sub.add_parser("tables", help="Tables I and III from per-volume metrics; the compute table")
    s.add_argument("--metrics", nargs="+", required=True)
    s.add_argument("--methods", type=_json, required=True)
    s.add_argument("--test-splits", type=_splits, required=True)
    s.add_argument("--main-split", required=True)
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--mask-type", choices=["random", "equispaced"], default="random",
                   help="config masks.types value (file names, captions)")
    s.add_argument("--mask-per", choices=["slice", "volume"], default="slice", help="config masks.per (captions)")
    s.add_argument("--perceptual", nargs="*", default=[],
                   help="csv files of `ldpm perceptual` (one per training seed); without them LPIPS/rFID/KID read n/a")
    s.add_argument("--recon", nargs="*", default=[], help="reconstructions: their cost attrs → compute_af<AF>")
    s.add_argument("--notes", type=_json, default=[], help="extra Table I footnotes (JSON list), e.g. weights caveats")
    s.add_argument("--measurement", default="magnitude", help="the measurement protocol (file names)")
    s.add_argument("--out-dir", required=True)
    _normalise_arg(s)  # Table I's caption names the rule
    s.set_defaults(func=cmd_tables)

    s = sub.add_parser("stats", help="bootstrap CIs over subjects, paired sign-flip tests by subject of LDPM vs "
                       "each method")
    s.add_argument("--metrics", nargs="+", required=True)
    _statistics_args(s)
    s.add_argument("--out-stem", required=True, help="writes <stem>.csv and <stem>.md")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("gap", help="protocol gap: each method under the magnitude vs the multicoil measurement")
    s.add_argument("--metrics", nargs="+", required=True, help="per-volume metrics of both measurements")
    s.add_argument("--stats-magnitude", required=True, help="stats csv of `ldpm stats`, magnitude measurement")
    s.add_argument("--stats-multicoil", required=True, help="stats csv of `ldpm stats`, multicoil measurement")
    _statistics_args(s)
    s.add_argument("--out-stem", required=True, help="writes <stem>.csv, <stem>.md and <stem>.png")
    s.add_argument("--out-png", default=None, help="the figure (default <out-stem>.png)")
    s.set_defaults(func=cmd_gap)

    s = sub.add_parser("figure2", help="example reconstructions with error maps")
    _test_set_args(s, per_method=True)
    s.add_argument("--zero-filled", required=True, help="zero-filled reconstruction (shown under GT)")
    s.add_argument("--split-filter", type=_json, default={})
    s.add_argument("--n-examples", type=int, default=2)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_figure2)

    s = sub.add_parser("table2", help="Table II: LDPM ablations (PSNR / SSIM on the main split)")
    s.add_argument("--metrics", nargs="+", required=True)
    s.add_argument("--methods", type=_json, required=True, help="ablation methods, in row order")
    s.add_argument("--split-filter", type=_json, default={})
    s.add_argument("--split-name", default="main")
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--mask-type", choices=["random", "equispaced"], default="random",
                   help="config masks.types value (file names, captions)")
    s.add_argument("--out-stem", required=True, help="writes <stem>.csv, .md and .tex")
    s.add_argument("--mode", choices=["swap", "retrain"], default="swap", help="ldpm.ablations_mode (caption)")
    s.set_defaults(func=cmd_table2)

    s = sub.add_parser("tune-sampler", help="choose LDPM sampler settings on validation slices (ldpm.tuning)")
    s.add_argument("--val-h5", required=True)
    s.add_argument("--val-csv", required=True)
    s.add_argument("--weights", type=_json, required=True, help="the full LDPM's weight files")
    s.add_argument("--hp", type=_json, required=True, help="ldpm sub-blocks (sampler, tuning, models)")
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--mask-type", choices=["random", "equispaced"], default="random",
                   help="config masks.types value (file names, captions)")
    s.add_argument("--center-fraction", type=float, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--out-json", required=True, help="chosen settings")
    s.add_argument("--out-csv", required=True, help="every grid row with its validation PSNR")
    _normalise_arg(s)
    _measurement_args(s)
    s.set_defaults(func=cmd_tune_sampler)

    s = sub.add_parser("tune-cs", help="choose the λ of a compressed-sensing row on validation slices (ldpm.tuning)")
    s.add_argument("method", choices=["cs_tv", "cs_wavelet"])
    s.add_argument("--val-h5", required=True)
    s.add_argument("--val-csv", required=True)
    s.add_argument("--hp", type=_json, required=True, help="config block cs")
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--mask-type", choices=["random", "equispaced"], default="random")
    s.add_argument("--center-fraction", type=float, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out-json", required=True, help="chosen λ")
    s.add_argument("--out-csv", required=True, help="every λ with its validation PSNR")
    _normalise_arg(s)
    _measurement_args(s)
    s.set_defaults(func=cmd_tune_cs)

    s = sub.add_parser("ldpm-diagnostics", help="where LDPM's latent route loses or gains, per test split")
    _test_set_args(s)
    s.add_argument("--masks", required=True)
    s.add_argument("--recon", required=True, help="LDPM's reconstruction file")
    s.add_argument("--weights", type=_json, required=True)
    s.add_argument("--hp", type=_json, required=True)
    s.add_argument("--test-splits", type=_splits, required=True, help="config test_splits")
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--mask-type", choices=["random", "equispaced"], default="random",
                   help="config masks.types value (file names, captions)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--out-stem", required=True, help="writes <stem>.csv, .md and .tex")
    _normalise_arg(s)
    s.set_defaults(func=cmd_ldpm_diagnostics)

    s = sub.add_parser("figure3", help="Fig 3: MR-VAE vs natural-image VAE reconstructions, metrics CSV")
    _test_set_args(s)
    s.add_argument("--weights", type=_json, required=True, help='{"mrvae": file, "natural_vae": file}')
    s.add_argument("--hp", type=_json, required=True, help="ldpm sub-blocks sd_dir and vae")
    s.add_argument("--split-filter", type=_json, default={})
    s.add_argument("--split-name", default="main")
    s.add_argument("--out", required=True, help="figure (png)")
    s.add_argument("--out-csv", required=True, help="PSNR / SSIM per VAE")
    s.set_defaults(func=cmd_figure3)

    s = sub.add_parser("report", help="one self-contained HTML page: tables, figures, provenance audits")
    s.add_argument("--tables", nargs="+", required=True, help="table .md files (caption, table, notes) or csv")
    s.add_argument("--figures", nargs="*", default=[], help="png files, inlined")
    s.add_argument("--texts", nargs="*", default=[], help="text files shown verbatim (audits)")
    s.add_argument("--splits", nargs="*", default=[], help="train/val/test csv files: the report's data section")
    s.add_argument("--source", default="fastmri", help="config data.source (embedded adds the data's limits)")
    s.add_argument("--table3", nargs="*", default=[], help="Table III csv files: main split beside OOD columns")
    s.add_argument("--main-split", default="all")
    s.add_argument("--ood-splits", type=_json, default=[], help="test_splits names of other-anatomy data (JSON)")
    s.add_argument("--stand-in", type=_json, default=[], help="configured inputs marked STAND-IN.json (JSON list)")
    s.add_argument("--config-files", type=_json, default=[], help="the run's config file(s) (JSON list): summary")
    s.add_argument("--seed", type=int, help="config seed: summary")
    s.add_argument("--training-seeds", type=_json, default=[], help="config training_seeds (JSON list): summary")
    s.add_argument("--benchmarks", help="results/benchmarks: the summary's wall time, from the files there")
    s.add_argument("--headline", nargs="*", default=[], help="forest plots forest_<protocol>.png, shown first")
    s.add_argument("--stats", nargs="*", default=[], help="stats_<protocol>.csv: the headline's significance line")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("forest-plot", help="the report's headline: each method's difference to LDPM with its CI")
    s.add_argument("--stats", required=True, help="stats_<protocol>.csv of `ldpm stats`")
    s.add_argument("--mask-type", default="random")
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--confidence", type=float, help="the CI level of the statistics (config evaluation.confidence)")
    s.add_argument("--out", required=True)
    s.add_argument("--measurement", default="magnitude", help="the measurement protocol (title)")
    s.set_defaults(func=cmd_forest_plot)

    s = sub.add_parser("audit", help="provenance chain of an output: table ← metrics ← recon ← … ← raw files")
    s.add_argument("paths", nargs="+", help="tables, figures, reconstructions … with a provenance record "
                   "(kept in results/provenance/records/)")
    s.add_argument("--method", help="follow one table row only (method name or its label, e.g. U-Net)")
    s.add_argument("--max-raw", type=int, default=20, help="raw files listed per index (0: all)")
    s.add_argument("--verify-raw", action="store_true", help="re-hash the raw files against index.csv")
    s.add_argument("--out", help="write the text here instead of stdout")
    s.set_defaults(func=cmd_audit, record=False)

    s = sub.add_parser("rehearsal-inputs", help="stand-ins (random weights, simulated fastMRI files) for every local "
                       "input configs/paper.yaml reads: the paper-path rehearsal (configs/rehearsal.yaml)")
    s.add_argument("--out", required=True, help="folder to fill (configs/rehearsal.yaml reads rehearsal/)")
    s.add_argument("--profile", choices=["cpu", "full"], default="cpu",
                   help="cpu: 4-slice volumes, 3 test slices (with configs/rehearsal-cpu.yaml); full: the GPU "
                   "rehearsal's data, every Table III column")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_rehearsal_inputs, record=False)

    s = sub.add_parser("weights", help="LPIPS / Inception backbone files: check them, or fetch them (internet)")
    s.add_argument("action", choices=["check", "fetch"], help="fetch downloads and verifies sha256; never "
                   "called by the pipeline")
    s.add_argument("--dir", default="weights", help="the pipeline's evaluation.weights_dir")
    s.set_defaults(func=cmd_weights, record=False)
    return p


def main(argv: list[str] | None = None) -> int:
    from ldpm import LdpmError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    from ldpm import io, provenance

    io.WRITTEN.clear()
    provenance.EXTRA_INPUTS.clear()
    started = time.time()
    try:
        args.func(args)
        # One provenance record per output (in results/provenance/records/), written here so no stage can forget it.
        if getattr(args, "record", True) and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 records
            provenance.record_stage(args, argv, list(io.WRITTEN), started, time.time())
    except LdpmError as exc:
        print(f"ldpm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
