"""Config validation against workflow/schemas/config.schema.yaml: defaults filled, unknown keys and wrong types
rejected with a one-line error naming the key. Values are data only; nothing in a config is ever executed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import yaml

from ldpm import LdpmError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _fill_defaults(instance: dict, schema: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(instance[key], sub)


_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _coerce_numbers(value, schema: dict):
    """Snakemake hands nested `--config` overrides (`masks={"accelerations":[4]}`) over with strings for numbers:
    where the schema asks for an integer / number and a string parses cleanly as one, use the number. Anything
    else (including 'four', ' 4', 'nan') is left for validation to reject."""
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: _coerce_numbers(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        return [_coerce_numbers(v, items) for v in value] if isinstance(items, dict) else value
    if isinstance(value, str):
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else types
        if "string" not in types:  # a string-typed key keeps its string, even "4"
            if "integer" in types and _INTEGER.fullmatch(value):
                return int(value)
            if "number" in types and _NUMBER.fullmatch(value):
                return float(value)
    return value


def _integer_af_keys(config: dict) -> None:
    """masks.center_fractions is keyed by AF: YAML gives integer keys, `--config` overrides give strings ("8").
    One key type (int) keeps lookups and the workflow's sorted JSON params working; a string key is an override,
    so its value wins over the file's integer key (Snakemake's merge order does not say which came last)."""
    fractions = config.get("masks", {}).get("center_fractions")
    if isinstance(fractions, dict):
        overrides = {int(k): v for k, v in fractions.items() if isinstance(k, str) and _INTEGER.fullmatch(k)}
        kept = {k: v for k, v in fractions.items() if not (isinstance(k, str) and _INTEGER.fullmatch(k))}
        config["masks"]["center_fractions"] = kept | overrides


def _key_of(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return ".".join(filter(None, [path, unknown[0] if unknown else ""]))
    return path or "(top level)"


def load_schema(schema_path: str | Path = SCHEMA_PATH) -> dict:
    """The top-level schema with every sections/<name>.yaml block (one per model) merged under `properties`."""
    schema_path = Path(schema_path)
    schema = yaml.safe_load(schema_path.read_text())
    for section in sorted((schema_path.parent / "sections").glob("*.yaml")):
        schema["properties"].update(yaml.safe_load(section.read_text()))
    return schema


def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Return a validated copy of `config` with defaults filled in; raise LdpmError on the first problem."""
    schema = load_schema(schema_path)
    config = _coerce_numbers(copy.deepcopy(config), schema)
    _fill_defaults(config, schema)
    _integer_af_keys(config)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        if err.validator == "additionalProperties":
            raise LdpmError(f"config key {_key_of(err)}: unknown key; check its spelling against "
                            f"{Path(schema_path).name}")
        raise LdpmError(f"config key {_key_of(err)}: {err.message}")
    check_semantics(config)
    return config


def check_semantics(config: dict) -> None:
    """Relations between keys that a JSON schema cannot state."""
    data, masks = config["data"], config["masks"]
    crops = {"data.crop_size": data["crop_size"]} | {f"data.datasets.{name}.crop_size": spec["crop_size"]
                                                    for name, spec in data["datasets"].items() if "crop_size" in spec}
    for key, crop in crops.items():
        if data["image_size"] > crop:
            raise LdpmError(f"config key {key}: {crop} < data.image_size {data['image_size']}; images are only ever "
                            f"shrunk after cropping")
    if "multicoil" in config["measurements"]:
        for key, crop in crops.items():
            if crop != data["image_size"]:
                raise LdpmError(f"config key {key}: {crop} but data.image_size is {data['image_size']}; the multicoil "
                                f"measurement (config key measurements) works at the image grid without a resize, so "
                                f"set them equal or drop multicoil")
        fractions = [("masks.center_fractions", cf) for cf in masks["center_fractions"].values()]
        fractions += [("masks.train.center_fractions", cf) for cf in masks["train"]["center_fractions"]]
        for key, cf in fractions:
            if round(cf * data["image_size"]) < 2:
                raise LdpmError(f"config key {key}: {cf} keeps {round(cf * data['image_size'])} centre column(s) of "
                                f"{data['image_size']}; the multicoil measurement's ESPIRiT maps need at least 2 "
                                f"(ACS lines): raise it to {2 / data['image_size']:.3g} or drop multicoil")
    ldpm = config["ldpm"]
    # LDPM's latent must pass the U-Net's down/up path whole: image_size / VAE factor / 2^(U-Net levels − 1).
    vae_factor, unet_down = (8, 8) if ldpm["sd_dir"] else (ldpm["vae"]["latent_factor"],
                                                         2 ** (len(ldpm["unet"]["block_out_channels"]) - 1))
    if data["image_size"] % (vae_factor * unet_down):
        size, step = data["image_size"], vae_factor * unet_down
        lower = size - size % step
        raise LdpmError(f"config key data.image_size: {size} is not divisible by {step} (VAE factor {vae_factor} × "
                        f"U-Net downsampling {unet_down}); use {lower or step} or {lower + step}")
    for af in [*masks["accelerations"], *masks["train"]["accelerations"]]:
        if af <= 1:
            raise LdpmError(f"config key masks.accelerations: acceleration {af} must be > 1 (e.g. 4 or 8)")
    for af in masks["accelerations"]:
        if af not in masks["center_fractions"]:
            raise LdpmError(f"config key masks.center_fractions: no centre fraction for AF {af}; add '{af}: 0.04'")
    if len(masks["train"]["accelerations"]) != len(masks["train"]["center_fractions"]):
        raise LdpmError("config key masks.train.center_fractions: needs one value per masks.train.accelerations")
    from ldpm.stages import RECONSTRUCTORS

    for method in config["methods"]:
        if method not in RECONSTRUCTORS:
            raise LdpmError(f"config key methods: unknown method '{method}'; known: {', '.join(RECONSTRUCTORS)}")
    if config["main_split"] not in config["test_splits"]:
        raise LdpmError(f"config key main_split: '{config['main_split']}' is not a test_splits entry")
    generated = {"brain", "ood"} if data["source"] == "embedded" else set()
    for name, spec in data["datasets"].items():
        if name in generated:
            continue  # made by the embedded generator
        if data["source"] == "embedded" and spec["role"] == "in_distribution":
            raise LdpmError(f"config key data.datasets.{name}.role: a folder added to the embedded default is test "
                            f"data (role: test or ood); to train on it, use data.source: fastmri")
        if not spec.get("paths"):
            raise LdpmError(f"config key data.datasets.{name}.paths: required (the folders of its fastMRI-format h5 "
                            f"files)")
        for p in spec["paths"]:
            if not Path(p).is_dir():
                raise LdpmError(f"config key data.datasets.{name}.paths: directory {p} not found")
    check_official_weights(config)


def datasets_in_test(config: dict) -> list[str]:
    """The datasets test volumes come from: every `test` / `ood` dataset, and the in_distribution ones unless
    data.split.test_fraction is 0."""
    data = config["data"]
    return [name for name, spec in data["datasets"].items()
            if spec["role"] != "in_distribution" or data["split"]["test_fraction"] > 0]


def check_official_weights(config: dict) -> None:
    """`official: true` only where no test volume comes from data the official weights were trained on (a row of
    Table I must never be evaluated on its own training subjects).

    `trained_on` entries are data.datasets names, or folders (an entry with a '/') for training data this run does
    not read, e.g. at the embedded scale. Checked by name and by resolved folder: a test dataset whose folder is, or
    lies inside, a training folder is refused. A copy of training files in another folder (under other names) cannot
    be caught this way; only hashing fastMRI's training set could, which this run does not have."""
    datasets = config["data"]["datasets"]
    for model in ("unet", "varnet"):
        block = config[model]
        if not block["official"] or model not in config["methods"]:
            continue
        if not block["trained_on"]:
            raise LdpmError(f"config key {model}.trained_on: required when {model}.official is true; list the "
                            f"data.datasets (or folders) fastMRI's official weights were trained on (its brain "
                            f"multicoil_train and multicoil_val)")
        unknown = [n for n in block["trained_on"] if "/" not in n and n not in datasets]
        if unknown:  # a stale name (a renamed dataset) would make the checks below compare nothing
            raise LdpmError(f"config key {model}.trained_on: '{unknown[0]}' is not a data.datasets entry (have: "
                            f"{', '.join(datasets)}); name the datasets the official weights were trained on, or "
                            f"give their folders as paths containing '/'")
        seen = sorted(set(block["trained_on"]) & set(datasets_in_test(config)))
        if seen:
            raise LdpmError(f"config key {model}.official: the test set draws volumes from {', '.join(seen)}, which "
                            f"the official weights were trained on ({model}.trained_on); test them only on datasets "
                            f"they never saw (role: test, with data.split.test_fraction: 0) or set {model}.official: "
                            f"false to train {model} here")
        trained = [(entry, Path(p).resolve()) for entry in block["trained_on"]
                   for p in ([entry] if "/" in entry else datasets[entry].get("paths") or [])]
        for name in datasets_in_test(config):
            for path in datasets[name].get("paths") or []:
                test_dir = Path(path).resolve()
                for entry, train_dir in trained:
                    if test_dir == train_dir or train_dir in test_dir.parents:
                        raise LdpmError(f"config key data.datasets.{name}.paths: test folder {path} lies in {train_dir}"
                                        f", which {model}'s official weights were trained on ({model}.trained_on: "
                                        f"{entry}); test on folders outside it or set {model}.official: false")


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise LdpmError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LdpmError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return validate_config(raw)


STAND_IN_MANIFEST = "STAND-IN.json"  # `ldpm rehearsal-inputs` marks every folder it writes with this file


def stand_in_inputs(config: dict) -> list[str]:
    """The configured input paths (data folders, SD folder, VGG / official / backbone weights) that lie in a folder
    marked STAND-IN.json: random weights or simulated data from `ldpm rehearsal-inputs`. The report and Table I say
    that nothing computed from them is a result."""
    paths = [p for spec in config["data"]["datasets"].values() for p in spec.get("paths") or []]
    paths += [config["ldpm"]["sd_dir"], config["ldpm"]["vgg_weights"], config["swinmr"]["vgg_weights"],
              config["evaluation"]["weights_dir"]]
    paths += [config[m]["weights"] for m in ("unet", "varnet") if config[m]["official"]]
    marked = {str(p) for p in paths if p and any((d / STAND_IN_MANIFEST).is_file()
                                                 for d in (Path(p), *Path(p).parents))}
    return sorted(marked)
