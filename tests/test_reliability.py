"""Bad-input matrix at the command line: each class of bad input gives exit status 2, one line on stderr that names
the file or config key, and no output file that Snakemake could mistake for a finished one."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import REPO

from ldpm import LdpmError
from ldpm.cli import main
from ldpm.config import validate_config


def run_cli(capsys, *argv: str) -> str:
    """Run `ldpm argv…` in-process; assert the failure contract and return the one error line."""
    assert main(list(argv)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ldpm: error:")]
    assert len(err) == 1, err
    return err[0]


def one_raw_file(raw_dir: Path, tmp_path: Path, name: str = "bad.h5") -> Path:
    """A copy of one good raw volume in its own input directory, to be damaged by the test."""
    src = sorted((raw_dir / "brain").glob("*.h5"))[0]
    out = tmp_path / "in" / name
    out.parent.mkdir()
    shutil.copy(src, out)
    return out


def damage(path: Path, how: str) -> None:
    if how == "not_hdf5":
        path.write_text("this is a text file with an .h5 name")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:8192])
    elif how == "no_kspace":
        with h5py.File(path, "a") as fh:
            del fh["kspace"]
    elif how == "wrong_rank":
        with h5py.File(path, "a") as fh:
            k = fh["kspace"][:, 0]
            del fh["kspace"]
            fh["kspace"] = k  # single-coil (slices, H, W): not the multi-coil layout
    elif how == "no_field_strength":
        with h5py.File(path, "a") as fh:
            header = fh["ismrmrd_header"][()].decode()
            start, end = header.index("<systemFieldStrength_T>"), header.index("</systemFieldStrength_T>")
            del fh["ismrmrd_header"]
            fh["ismrmrd_header"] = header[:start] + header[end + len("</systemFieldStrength_T>"):]
    elif how == "unknown_acquisition":
        with h5py.File(path, "a") as fh:
            fh.attrs["acquisition"] = "AXDWI"


@pytest.mark.parametrize("how,message", [
    ("not_hdf5", "not a readable HDF5 file"),
    ("truncated", "not a readable HDF5 file"),
    ("no_kspace", "no 'kspace' dataset"),
    ("wrong_rank", "expected multi-coil"),
    ("no_field_strength", "systemFieldStrength_T"),
    ("unknown_acquisition", "unknown acquisition 'AXDWI'"),
])
def test_damaged_raw_file_at_index(capsys, raw_dir, tmp_path, how, message):
    bad = one_raw_file(raw_dir, tmp_path)
    damage(bad, how)
    datasets = {"brain": {"role": "in_distribution", "paths": [str(bad.parent)]}}
    line = run_cli(capsys, "index", "--datasets", json.dumps(datasets), "--out", str(tmp_path / "index.csv"))
    assert str(bad) in line and message in line
    assert not (tmp_path / "index.csv").exists()


def _index_with(raw_dir: Path, tmp_path: Path, edit) -> Path:
    """index.csv over a copy of the brain set in which `edit(path)` damaged the first file after indexing."""
    from ldpm.data.preprocess import build_index

    data = tmp_path / "brain"
    shutil.copytree(raw_dir / "brain", data)
    build_index({"brain": {"role": "in_distribution", "paths": [str(data)]}}, [], tmp_path / "index.csv")
    edit(sorted(data.glob("*.h5"))[0])
    return tmp_path / "index.csv"


def _nan_kspace(path: Path) -> None:
    with h5py.File(path, "a") as fh:
        k = fh["kspace"][()]
        k[0, 0, 3, 3] = np.inf
        fh["kspace"][...] = k


@pytest.mark.parametrize("case,params,message", [
    ("nan_inf", {}, "NaN or Inf"),
    ("too_few_slices", {"drop_last_slices": 50}, "data.drop_last_slices=50"),
])
def test_preprocess_refuses_and_leaves_nothing(capsys, raw_dir, tmp_path, case, params, message):
    index = _index_with(raw_dir, tmp_path, _nan_kspace if case == "nan_inf" else (lambda p: None))
    pre = {"crop_size": 64, "image_size": 32, "drop_last_slices": 3, "val_fraction": 0.2, "test_fraction": 0.34}
    out = tmp_path / "out"
    line = run_cli(capsys, "preprocess", "--index", str(index), "--out-dir", str(out),
                   "--params", json.dumps(pre | params))
    assert message in line and ".h5" in line
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.mark.parametrize("edit,key", [
    (lambda c: c["unet"].update(epocs=3), "config key unet.epocs: unknown key"),
    (lambda c: c["unet"].update(epochs="many"), "config key unet.epochs"),
    (lambda c: c["masks"].update(accelerations=[1]), "config key masks.accelerations"),
    (lambda c: c["data"].update(image_size=200), "config key data.crop_size"),
    (lambda c: c["data"]["datasets"].update(mine={"role": "test", "paths": ["mine"], "crop_size": 16}),
     "config key data.datasets.mine.crop_size: 16 < data.image_size"),
    (lambda c: c["data"].update(image_size=60), "config key data.image_size: 60 is not divisible by 8 (VAE factor 4"),
    (lambda c: c.update(methods=["zero_filled", "cs_l1"]), "config key methods: unknown method 'cs_l1'"),
    (lambda c: c.update(main_split="Skyra"), "config key main_split"),
    (lambda c: c.update(device="cpu; touch PWNED"), "config key device"),
    (lambda c: c.update(measurements=["magnitude", "coils"]), "config key measurements"),
    (lambda c: c.update(measurements=["multicoil"]) or c["data"].update(crop_size=128),
     "config key data.crop_size: 128 but data.image_size is 64; the multicoil measurement"),
    (lambda c: c.update(measurements=["multicoil"]) or c["data"]["datasets"].update(
        mine={"role": "test", "paths": ["mine"], "crop_size": 320}), "config key data.datasets.mine.crop_size: 320"),
    (lambda c: c.update(measurements=["multicoil"]) or c["masks"]["center_fractions"].update({8: 0.01}),
     "config key masks.center_fractions: 0.01 keeps 1 centre column(s) of 64"),
])
def test_bad_config_is_named(edit, key):
    cfg = copy.deepcopy(default_config())
    edit(cfg)
    with pytest.raises(LdpmError) as err:
        validate_config(cfg)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_nested_config_override_strings_become_numbers():
    """snakemake --config 'masks={"accelerations":[4]}' hands the schema '4', a string, at any depth."""
    cfg = validate_config({"masks": {"accelerations": ["4"], "train": {"center_fractions": ["0.08"]}},
                           "data": {"split": {"val_fraction": ".2"}}, "seed": "-3"})
    assert cfg["masks"]["accelerations"] == [4] and isinstance(cfg["masks"]["accelerations"][0], int)
    assert cfg["masks"]["train"]["center_fractions"] == [0.08] and cfg["data"]["split"]["val_fraction"] == 0.2
    assert cfg["seed"] == -3
    for bad, message in [("four", "'four' is not of type 'integer'"), ("4.5", "'4.5' is not of type 'integer'"),
                         (" 4", "' 4' is not of type 'integer'")]:
        with pytest.raises(LdpmError) as err:
            validate_config({"masks": {"accelerations": [bad]}})
        assert str(err.value) == f"config key masks.accelerations.0: {message}"


def test_missing_weights_file_at_reconstruct(capsys, prepared, tmp_path):
    from ldpm.data.masks import make_test_masks
    from ldpm.io import read_table

    ids = read_table(prepared / "test.csv")["slice_id"].tolist()
    make_test_masks(ids, 32, 8, 0.04, 0, tmp_path / "af8.npz")
    out = tmp_path / "recon.h5"
    line = run_cli(capsys, "reconstruct", "unet", "--test-h5", str(prepared / "test.h5"), "--test-csv",
                   str(prepared / "test.csv"), "--masks", str(tmp_path / "af8.npz"), "--out", str(out),
                   "--weights", json.dumps({"model": str(tmp_path / "nowhere/unet.safetensors")}),
                   "--hp", json.dumps({"chans": 4, "num_pool_layers": 2}))
    assert "nowhere/unet.safetensors: weights file not found" in line
    assert not out.exists()


def test_corrupted_checkpoint_at_train(capsys, prepared, tmp_path):
    from ldpm.train import checkpoint_identity, claim_checkpoint_dir

    ckpt = tmp_path / "ckpt"
    out = tmp_path / "unet.safetensors"
    hp = {"chans": 4, "num_pool_layers": 2, "drop_prob": 0.0, "lr": 1e-3, "batch_size": 4, "epochs": 1,
          "ckpt_every": 1}
    masks = {"accelerations": [8], "center_fractions": [0.04]}
    # a checkpoint of this very run (same identity), damaged on disk
    claim_checkpoint_dir(ckpt, checkpoint_identity("unet", {"train": str(prepared / "train.h5")}, hp, masks, 0))
    (ckpt / "last.pt").write_bytes(b"\x80\x04 definitely not a checkpoint")
    line = run_cli(capsys, "train", "unet", "--inputs", json.dumps({"train": str(prepared / "train.h5")}),
                   "--out", str(out), "--ckpt-dir", str(ckpt), "--hp", json.dumps(hp),
                   "--masks", json.dumps({"accelerations": [8], "center_fractions": [0.04]}), "--device", "cpu")
    assert "last.pt: corrupted checkpoint" in line and "delete it" in line
    assert not out.exists()


def test_empty_split_after_filtering(capsys, tmp_path):
    import pandas as pd

    csv = tmp_path / "zf_volumes.csv"
    pd.DataFrame({"volume": ["v1"], "dataset": ["brain"], "acquisition": ["AXT2"], "field_strength": [3.0],
                  "system_model": ["Skyra"], "patient_id": ["p1"], "n_slices": [5], "psnr": [20.0], "ssim": [0.5],
                  "nmse": [0.1], "method": ["zero_filled"], "acceleration": [8]}).to_csv(csv, index=False)
    splits = {"all": {"dataset": "brain"}, "Skyra15": {"dataset": "brain", "field_strength": 1.5}}
    line = run_cli(capsys, "tables", "--metrics", str(csv), "--methods", '["zero_filled"]', "--test-splits",
                   json.dumps(splits), "--main-split", "all", "--acceleration", "8", "--out-dir", str(tmp_path / "t"))
    assert "config key test_splits.Skyra15" in line and "selects no test volume" in line
    assert not (tmp_path / "t" / "table3_magnitude_random_af8.csv").exists()


def test_config_strings_reach_the_shell_as_single_arguments(tmp_path):
    """Safety: a split name or path with spaces and shell syntax is passed as one argument, never executed."""
    import shlex

    from test_pipeline import snakemake

    cfg = default_config()
    name = "a b; touch PWNED"
    cfg["test_splits"][name] = {"dataset": "brain"}
    cfg["main_split"] = name
    cfg["evaluation"]["weights_dir"] = "my weights; touch PWNED2"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake(tmp_path, "-n", "-p")
    assert result.returncode == 0, result.stdout[-2000:]
    commands = {}
    for line in result.stdout.splitlines():
        argv = shlex.split(line.removeprefix("Shell command: ").split(" > ")[0]) if " -m ldpm " in line else []
        if argv[:2] and argv[0].startswith("LDPM_CODE="):  # LDPM_CODE=<version> python -m ldpm <stage> ...
            argv = argv[3:]
            commands.setdefault(argv[1], argv)
    assert commands["tables"][commands["tables"].index("--main-split") + 1] == name
    assert commands["perceptual"][commands["perceptual"].index("--weights-dir") + 1] == "my weights; touch PWNED2"
    assert not list(tmp_path.glob("PWNED*"))
