"""`ldpm` command line: one sub-command per pipeline stage. Snakemake rules call these; so can a person.

Config blocks arrive as JSON (`--params '{...}'`) so that a rule passes exactly the keys its stage uses.
Any LdpmError ends the process with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def cmd_embedded(a: argparse.Namespace) -> None:
    from ldpm.data.embedded import generate_dataset

    generate_dataset(a.out, seed=a.seed, **a.params)


def cmd_index(a: argparse.Namespace) -> None:
    from ldpm.data.preprocess import build_index

    build_index(a.datasets, a.extra_acquisitions, a.out)


def cmd_preprocess(a: argparse.Namespace) -> None:
    from ldpm.data.preprocess import preprocess

    preprocess(a.index, a.out_dir, seed=a.seed, **a.params)


def cmd_masks(a: argparse.Namespace) -> None:
    from ldpm.data.masks import make_test_masks
    from ldpm.io import read_images, read_table

    width = read_images(a.test_h5).shape[-1]
    make_test_masks(read_table(a.test_csv)["slice_id"].tolist(), width, a.acceleration, a.center_fraction,
                    a.seed, a.out)


def cmd_train(a: argparse.Namespace) -> None:
    from ldpm.stages import TRAINERS, resolve

    resolve(TRAINERS, a.model, "model")(a.inputs, a.out, a.ckpt_dir, a.hp, a.masks, a.seed, a.device)


def cmd_reconstruct(a: argparse.Namespace) -> None:
    from ldpm.reconstruct import reconstruct

    reconstruct(a.method, a.test_h5, a.test_csv, a.masks, a.out, weights=a.weights, hp=a.hp,
                batch_size=a.batch_size, device=a.device, seed=a.seed)


def cmd_metrics(a: argparse.Namespace) -> None:
    from ldpm.evaluate.metrics import evaluate

    evaluate(a.test_h5, a.test_csv, a.recon, a.method, a.acceleration, a.out_volumes, a.out_slices)


def cmd_tables(a: argparse.Namespace) -> None:
    from pathlib import Path

    from ldpm.evaluate.tables import load_volume_metrics, table1, table3

    volumes = load_volume_metrics(a.metrics)
    out = Path(a.out_dir)
    table1(volumes, a.methods, a.test_splits[a.main_split], a.acceleration, out / f"table1_af{a.acceleration}")
    table3(volumes, a.methods, a.test_splits, a.acceleration, out / f"table3_af{a.acceleration}")


def cmd_figure2(a: argparse.Namespace) -> None:
    from ldpm.evaluate.figures import figure2

    recons = dict(zip(a.methods, a.recon))
    figure2(a.test_h5, a.test_csv, recons, a.out, split_filter=a.split_filter, n_examples=a.n_examples)


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

    s = sub.add_parser("preprocess", help="RSS, crop, slice filter, resize, normalise, subject-level splits")
    s.add_argument("--index", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--params", type=_json, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_preprocess)

    s = sub.add_parser("masks", help="fixed, seeded test masks for one acceleration")
    s.add_argument("--test-h5", required=True)
    s.add_argument("--test-csv", required=True)
    s.add_argument("--acceleration", type=int, required=True)
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
    s.add_argument("--masks", type=_json, required=True, help="{accelerations, center_fractions} for training")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("reconstruct", help="reconstruct the test set with one method")
    s.add_argument("method")
    s.add_argument("--test-h5", required=True)
    s.add_argument("--test-csv", required=True)
    s.add_argument("--masks", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--weights", type=_json, default={}, help="{name: file} of the method's weights")
    s.add_argument("--hp", type=_json, default={})
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("metrics", help="per-volume and per-slice PSNR/SSIM/NMSE")
    s.add_argument("--test-h5", required=True)
    s.add_argument("--test-csv", required=True)
    s.add_argument("--recon", required=True)
    s.add_argument("--method", required=True)
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--out-volumes", required=True)
    s.add_argument("--out-slices", required=True)
    s.set_defaults(func=cmd_metrics)

    s = sub.add_parser("tables", help="Tables I and III from per-volume metrics")
    s.add_argument("--metrics", nargs="+", required=True)
    s.add_argument("--methods", type=_json, required=True)
    s.add_argument("--test-splits", type=_json, required=True)
    s.add_argument("--main-split", required=True)
    s.add_argument("--acceleration", type=int, required=True)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_tables)

    s = sub.add_parser("figure2", help="example reconstructions with error maps")
    s.add_argument("--test-h5", required=True)
    s.add_argument("--test-csv", required=True)
    s.add_argument("--methods", nargs="+", required=True)
    s.add_argument("--recon", nargs="+", required=True, help="one file per method, same order")
    s.add_argument("--split-filter", type=_json, default={})
    s.add_argument("--n-examples", type=int, default=2)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_figure2)
    return p


def main(argv: list[str] | None = None) -> int:
    from ldpm import LdpmError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        args.func(args)
    except LdpmError as exc:
        print(f"ldpm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
