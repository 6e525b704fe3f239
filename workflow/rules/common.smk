import functools
import json
import re
import sys
import shlex
import shutil
from pathlib import Path

from ldpm import LdpmError
from ldpm.code_version import code_version, entry_version
from ldpm.config import stand_in_inputs, validate_config
from ldpm.method import check_sd_dir
from ldpm.stages import RECONSTRUCTORS, TRAINERS

try:
    config.update(validate_config(config, Path(workflow.current_basedir) / "../schemas/config.schema.yaml"))
except LdpmError as exc:
    # One line on stderr and a non-zero exit, before any job runs (a WorkflowError would add a traceback).
    sys.exit(f"ldpm: error: {exc}")

RESULTS = "results"
# Every result is per measurement protocol (config `measurements`, ldpm.physics.Measurement): "magnitude" (the
# paper's) or "multicoil" (raw coil k-space), "{measurement}_{mask}_af{af}" in file names (e.g. magnitude_random_af8).
MEASUREMENTS = config["measurements"]
MULTICOIL = "multicoil" in MEASUREMENTS
LDPM_ENV = "../../envs/ldpm.yaml"  # every rule's conda environment (relative to the rules files)
# Every test protocol is a (mask type, AF) pair, "{mask}_af{af}" in file names (e.g. random_af8).
MASK_TYPES = config["masks"]["types"]
AFS = config["masks"]["accelerations"]
SEED = config["seed"]  # splits, test masks, bootstrap: one value per run
# Every trained model, and the sampling of every method, runs once per training seed ("seed{seed}" in file names);
# Table I reports mean ± sd over them. Fig 2-3 and the LDPM diagnostics show the first seed's models.
SEEDS = config["training_seeds"]
FIRST_SEED = SEEDS[0]
# Config strings reach shell commands quoted, never as shell syntax (numbers are typed by the schema).
DEVICE = shlex.quote(config["device"])
MAIN_SPLIT = shlex.quote(config["main_split"])
# Training jobs run data-parallel under torchrun when train_processes > 1 (see ldpm.train).
LDPM_CLI = "python -m ldpm"  # the module form: the conda environment has no `ldpm` script (see the Snakefile)
TRAIN_LAUNCHER = (LDPM_CLI if config["train_processes"] == 1 else
                  f"torchrun --standalone --nproc_per_node {config['train_processes']} -m ldpm")
# SLURM time limit of each training job, in minutes, at paper scale on one H100-class GPU (profiles/slurm): FLOPs per
# training slice (bench P1's counts: SD VAE 1.4 TFLOP, SwinIR 2.5, MRCN 0.35, NCSN++ 2.05 forward) × 3 for the
# backward × slices × epochs at ~100 TFLOP/s, then ×2 headroom. Estimates until benchmark files of a real run
# (results/benchmarks/train_*.tsv) replace them; the rest (embedded stand-ins) take an hour.
TRAIN_RUNTIME_MIN = {"ldpm_mrvae": 2160, "ldpm_mrcn": 1800, "ldpm_mrcn_no_mrvae": 1800, "ldpm_mrcn_no_skm": 1440,
                     "ldpm_sketcher": 1800, "score_mri": 4320, "swinmr": 720, "unet": 360, "varnet": 720}


def stage(*modules, launcher=LDPM_CLI):
    """The start of a rule's shell command: `LDPM_CODE=<version> python -m ldpm `. The version hashes the source
    of `modules` and of every ldpm module they import (ldpm.code_version), so Snakemake's `code` rerun trigger,
    which compares shell text, reruns a stage whose code changed and no other. (`ldpm.cli` itself is left out: it
    dispatches to every stage.) Keeping outputs after a refactor: README, "Reruns"."""
    return f"LDPM_CODE={code_version(list(modules))} {launcher} "


def job_stage(launcher=LDPM_CLI):
    """stage() for the generic rules (train, reconstruct), whose jobs run different code: the version is the job's
    `params.code` (trainer_code / recon_code), which Snakemake's `params` trigger compares job by job."""
    return f"LDPM_CODE={{params.code}} {launcher} "


@functools.cache
def trainer_code(model):
    """The code version of one training job: ldpm.train and the model's TRAINERS entry with what it imports."""
    return entry_version(TRAINERS[TRAIN[model].get("trainer", model)], ["ldpm.train"])


def train_masks(model):
    """The measurement a training job simulates: config masks.train, data.normalise and, for the models trained on
    the multicoil measurement, that protocol and the image grid (ldpm.baselines.training_images)."""
    masks = config["masks"]["train"] | {"normalise": config["data"]["normalise"]}
    if TRAIN[model].get("measurement") == "multicoil":
        masks |= {"measurement": "multicoil", "crop_size": config["data"]["crop_size"]}
    return masks


@functools.cache
def recon_code(method):
    """The code version of one reconstruction job: ldpm.reconstruct (with the registry and the clipping policy)
    and the method's RECONSTRUCTORS entry with what it imports."""
    return entry_version(RECONSTRUCTORS[method], ["ldpm.reconstruct"])


def as_json(value):
    """A config block as one shell-quoted JSON argument for the `ldpm` command line."""
    return shlex.quote(json.dumps(value, sort_keys=True))  # canonical: reordered YAML keys rerun nothing


def raw_datasets():
    """{name: {role, paths, ...}}: the generated directories of the embedded source (brain, ood), and every
    configured folder (fastMRI source, or your own test data added to the embedded default)."""
    data = config["data"]
    generated = {"brain", "ood"} if data["source"] == "embedded" else set()
    return {name: spec | ({"paths": [f"{RESULTS}/raw/embedded/{name}"]} if name in generated else {})
            for name, spec in data["datasets"].items()}


# Registries the rules files fill in (one entry per model / method; see src/ldpm/stages.py for the contracts):
# TRAIN[model] = {"inputs": {name: file}, "hp": config block}
#     -> rule train -> results/models/seed{seed}/{model}.safetensors
# RECON[method] = {"weights": {name: file}, "hp": config block}
#     -> rule reconstruct -> results/recon/{method}/seed{seed}/{mask}_af{af}.h5
# File names in TRAIN / RECON may hold {seed}, {mask}, {af}: `for_job` fills them from the job's wildcards.
# TARGETS: extra final outputs (tables, figures) that `rule all` requests.
TRAIN = {}
RECON = {}
TARGETS = []
# Files a stage reads through a path in its hp (SD-2-1-base's folder, VGG weights): declared inputs too, so replacing
# one reruns its dependants. READS[model or method] = [file, ...]
READS = {}
TABLE1_NOTES = []  # per-method caveats printed under Table I (e.g. weights not trained here)
STAND_IN = stand_in_inputs(config)  # inputs from `ldpm rehearsal-inputs`: Table I and the report say so
if STAND_IN:
    TABLE1_NOTES.append(f"STAND-IN inputs ({', '.join(STAND_IN)}): random weights / simulated data from `ldpm "
                        "rehearsal-inputs`; nothing in this table is a result.")


def ordered(mapping):
    """A config mapping whose order means something (test_splits: Table III's columns) as [key, value] pairs: as_json
    sorts object keys, so reordering such a mapping must reach the params as a list to rerun its tables."""
    return list(mapping.items())


def measured(measurement):
    """The model-name suffix of a measurement: models trained on its simulated inputs are unet (magnitude) and
    unet_multicoil (multicoil)."""
    return "" if measurement == "magnitude" else f"_{measurement}"


def for_job(files, w, **values):
    """{name: file} with {seed} / {mask} / {af} / {measurement} filled from the job's wildcards `w` (and `values`,
    which win); {measured} is the measurement's model suffix (`measured`)."""
    fill = dict(w.items()) | values
    if "measurement" in fill:
        fill["measured"] = measured(fill["measurement"])
    return {name: path.format(**fill) for name, path in files.items()}


def recon_weights(method, w, **values):
    """RECON[method]["weights"] for one job (e.g. the seed's models, the protocol's tuned sampler settings)."""
    return for_job(RECON[method]["weights"], w, **values)


def files_under(path):
    """Every file below a configured folder (or the file itself): what a stage reading `path` depends on. A path that
    does not exist is left for the stage's own one-line error."""
    if not path:
        return []
    path = Path(path)
    return sorted(str(f) for f in path.rglob("*") if f.is_file()) if path.is_dir() else [str(path)]


def model_file(model):
    """The final weights of `model`, a pattern over the training seed."""
    return f"{RESULTS}/models/seed{{seed}}/{model}.safetensors"


def measured_model_file(model):
    """The weights of `model` trained on the job's measurement (a reconstruct job's pattern: {measured} is filled by
    `for_job`)."""
    return f"{RESULTS}/models/seed{{seed}}/{model}{{measured}}.safetensors"


def coil_inputs(split):
    """What the multicoil measurement of a split is read from (ldpm.data.coils): the split's csv and the index file
    of every dataset it draws from ({name: file}: names split_csv, index_<dataset>)."""
    return ({f"{split}_csv": f"{RESULTS}/data/{split}.csv"}
            | {f"index_{name}": index_file(name) for name in split_datasets(split)})


def coil_raw(split):
    """The raw files behind a split's multicoil measurement (a generated directory stands for its files)."""
    return sorted({f for name in split_datasets(split) for f in raw_inputs(name)})


def measurement_inputs(w, split):
    """A scoring or tuning job's extra inputs under its measurement: none for magnitude; the index files and raw
    files of the split for multicoil."""
    if w.measurement == "magnitude":
        return []
    return list(coil_inputs(split).values())[1:] + coil_raw(split)


def measurement_note(w):
    """Table I's line naming the job's measurement protocol."""
    if w.measurement == "magnitude":
        return ["Measurement: magnitude (the paper's protocol): single-coil k-space simulated from the RSS image."]
    return ["Measurement: multicoil: the raw coil k-space under the same masks (drawn at a file's own width where "
            "it is not the image grid's; padding columns never sampled), ESPIRiT maps from each slice's ACS lines; "
            "ground truth the same RSS images (the raw grid's centre)."]


def measurement_args(w, split):
    """The `--measurement ... --index ... --crop-size ...` arguments of a scoring or tuning job; on the test split
    (the reconstruct job) also the test masks' seed and masks.per, to draw a slice's mask at its raw width."""
    if w.measurement == "magnitude":
        return "--measurement magnitude"
    index = " ".join(shlex.quote(f) for f in list(coil_inputs(split).values())[1:])
    args = f"--measurement {w.measurement} --index {index} --crop-size {config['data']['crop_size']}"
    if split == "test":
        args += f" --mask-seed {SEED} --masks-per {config['masks']['per']}"
    return args


def train_measured(model, inputs, hp, reads=()):
    """TRAIN[model] on the magnitude simulation and, when multicoil runs, TRAIN[model_multicoil]: the same stage and
    settings on the multicoil simulation of the same slices (`masks` gets measurement and crop_size; inputs gain the
    train/val csv and index files; the raw files are read)."""
    TRAIN[model] = {"inputs": inputs, "hp": hp}
    READS[model] = list(reads)
    if MULTICOIL:
        TRAIN[f"{model}_multicoil"] = {"inputs": inputs | coil_inputs("train") | coil_inputs("val"), "hp": hp,
                                       "trainer": model, "measurement": "multicoil"}
        READS[f"{model}_multicoil"] = list(reads) + coil_raw("train")


# ------------------------------------------------------------------ baselines (baselines.smk)
def without(block, *keys):
    """A config block minus keys its training ignores: Snakemake reruns a job whose params change, so changing a
    sampling setting must not retrain the model."""
    return {k: v for k, v in block.items() if k not in keys}


def official_weights(model):
    """The local official fastMRI state dict of `model` (unet / varnet), checked before any job runs."""
    path = config[model].get("weights")
    if not path:
        sys.exit(f"ldpm: error: config key {model}.weights: required when {model}.official is true; "
                 f"set it to the local path of fastMRI's brain {model} state dict")
    if model in config["methods"] and not Path(path).is_file():
        sys.exit(f"ldpm: error: config key {model}.weights: {path} not found; put fastMRI's brain {model} "
                 f"state dict there or fix the path")
    return path


# ------------------------------------------------------------------ LDPM (ldpm.smk)
LDPM = config["ldpm"]
try:
    check_sd_dir(LDPM["sd_dir"])
except LdpmError as exc:
    sys.exit(f"ldpm: error: {exc}")

# Natural-image patches default to the MRI image size, so the pretrained U-Net sees latents of the size it controls.
LDPM_NATURAL = LDPM["natural"] | {"patch_size": LDPM["natural"]["patch_size"] or config["data"]["image_size"]}
LDPM_TRAIN_H5 = f"{RESULTS}/data/train.h5"
LDPM_DATA = {"train": LDPM_TRAIN_H5, "val": f"{RESULTS}/data/val.h5"}  # val: per-epoch training curves
# The "SD" weights: files trained here at the embedded scale, nothing (read from sd_dir) at the paper scale.
LDPM_PRETRAINED = {} if LDPM["sd_dir"] else {"natural_vae": model_file("ldpm_natural_vae"),
                                             "natural_unet": model_file("ldpm_natural_unet")}
LDPM_WEIGHTS = LDPM_PRETRAINED | {name: model_file(f"ldpm_{name}") for name in ("sketcher", "mrvae", "mrcn")}


def ldpm_hp(*keys):
    """Only the `ldpm` sub-blocks a stage uses: Snakemake reruns a job whose params change, so e.g. a sampler
    setting must not retrain the models."""
    return {key: LDPM_NATURAL if key == "natural" else LDPM[key] for key in keys}


def ldpm_weights(*names):
    return {name: LDPM_WEIGHTS[name] for name in names if name in LDPM_WEIGHTS}


# Sampler settings the paper leaves open, chosen on the validation split per AF (ldpm.method.tuning); with an
# empty grid the reconstructions use ldpm.sampler as it is and this file is not made.
TUNED = f"{RESULTS}/ldpm/seed{{seed}}/sampler_{{measurement}}_{{mask}}_af{{af}}.json"
TUNE = bool(LDPM["tuning"]["grid"])


# The models trained on a measurement's own simulation (the sketcher learns from x_u, the MRCN from the sketch): a
# reconstruct or tuning job reads those of its measurement.
LDPM_MEASURED = {"sketcher": measured_model_file("ldpm_sketcher"), "mrcn": measured_model_file("ldpm_mrcn")}


def ldpm_method_weights(names, mrcn="mrcn"):
    weights = {name: LDPM_MEASURED.get(name, LDPM_WEIGHTS[name]) for name in names if name in LDPM_WEIGHTS}
    weights["mrcn"] = LDPM_MEASURED["mrcn"] if mrcn == "mrcn" else LDPM_WEIGHTS[mrcn]
    return weights | ({"sampler_tuned": TUNED} if TUNE else {})


# ------------------------------------------------------------------ evaluation (evaluate.smk)
PROTOCOL = "{measurement}_{mask}_af{af}"
PROTOCOL_KEEP = "{{measurement}}_{{mask}}_af{{af}}"  # PROTOCOL inside an expand() that must leave the wildcards
RECON_FILE = f"{RESULTS}/recon/{{method}}/seed{{seed}}/{PROTOCOL}.h5"
VOLUME_METRICS = f"{RESULTS}/metrics/{{method}}/seed{{seed}}/{PROTOCOL}_volumes.csv"
PERCEPTUAL = f"{RESULTS}/metrics/perceptual/seed{{seed}}/{PROTOCOL}.csv"


def recon_files(w, seed=None, methods=None):
    """The reconstructions of `methods` (default: config methods) for the job's protocol and one training seed
    (the magnitude measurement for jobs without one: Table II, the LDPM diagnostics)."""
    return expand(RECON_FILE, method=methods or config["methods"], seed=w.get("seed", seed), mask=w.mask, af=w.af,
                  measurement=w.get("measurement", "magnitude"))


def volume_metrics(w, methods=None, measurement=None):
    """Per-volume metrics of `methods` over every training seed: what the tables and statistics aggregate."""
    return expand(VOLUME_METRICS, method=methods or config["methods"], seed=SEEDS, mask=w.mask, af=w.af,
                  measurement=measurement or w.get("measurement", "magnitude"))


def caption(name):
    return f"../report/{name}.rst"


# ------------------------------------------------------------------ report (report.smk)
def trained_models():
    """The TRAIN models this run trains, in TRAIN order: those whose weights a run method (config `methods` and the
    Table II ablations) reads, directly or through another model's inputs. Asking for the training curve of any
    other TRAIN entry (e.g. the retrained-ablation MRCNs with ablations_mode: swap) would train it just for that."""
    by_file = {model_file(m): m for m in TRAIN}
    methods = [m for m in [*config["methods"], *LDPM["ablations"]] if m in RECON]
    files = [f.replace("{measured}", measured(measurement)) for m in methods for f in RECON[m]["weights"].values()
             for measurement in MEASUREMENTS]
    needed = set()
    while files:
        model = by_file.get(files.pop())
        if model is not None and model not in needed:
            needed.add(model)
            files += TRAIN[model]["inputs"].values()
    return [m for m in TRAIN if m in needed]


def ood_columns():
    """Table III columns whose data is another anatomy: the test splits whose `dataset` filter (one name or a list,
    one column over several datasets) selects only `ood` datasets."""
    datasets = config["data"]["datasets"]
    columns = []
    for name, where in config["test_splits"].items():
        chosen = where.get("dataset")
        chosen = chosen if isinstance(chosen, list) else [chosen]
        if all(datasets.get(d, {}).get("role") == "ood" for d in chosen):
            columns.append(name)
    return columns


# ------------------------------------------------------------------ preprocessing shards (data.smk)
# Everything is planned per dataset (one index checkpoint each), so an added or changed dataset leaves the plans,
# shard jobs and split files of the others as they are: adding a `role: test` folder retrains nothing. Datasets go
# into splits.csv (and the split files) in name order, so reordering data.datasets in the YAML reruns nothing.
DATASETS = sorted(config["data"]["datasets"])


def raw_inputs(dataset):
    """The raw inputs of one dataset's index: the generated directory (embedded source; one directory output, so a
    regeneration reruns every shard) or every .h5 file of its configured folders."""
    generated = f"{RESULTS}/raw/embedded"
    paths = raw_datasets()[dataset]["paths"]
    if all(d.startswith(f"{generated}/") for d in paths):
        return [generated]
    return sorted(str(f) for d in paths for f in Path(d).glob("*.h5"))


def index_spec(dataset):
    """What the index of `dataset` is made from: its spec without the preprocessing settings (a changed crop reruns
    its shards, not its index)."""
    return {dataset: without(raw_datasets()[dataset], "crop_size", "drop_last_slices")}


def index_file(dataset):
    return f"{RESULTS}/data/index/{dataset}.csv"


def shard_settings(dataset):
    """A shard job's preprocessing params: the global settings and only its own dataset's overrides, so that adding
    or changing another dataset reprocesses none of its shards."""
    data, spec = config["data"], config["data"]["datasets"][dataset]
    settings = {k: data[k] for k in ["crop_size", "image_size", "drop_last_slices"]}
    if "crop_size" in spec:
        settings["dataset_crop"] = {dataset: spec["crop_size"]}
    if "drop_last_slices" in spec:
        settings["dataset_drop"] = {dataset: spec["drop_last_slices"]}
    return settings


_SHARD_PLAN = {}


def shard_plan(dataset):
    """{shard: (volumes, paths, sha256 of their index rows)} of one dataset from its finished index, as `ldpm split`
    plans it; read once per version of the index file (every shard job's input and params ask for it)."""
    from ldpm.data.preprocess import plan_shards, read_index_text, shard_rows_sha256

    path = checkpoints.index.get(dataset=dataset).output[0]
    key = (path, Path(path).stat().st_mtime_ns, config["data"]["shard_size"])
    if key not in _SHARD_PLAN:
        index = read_index_text(path)
        plan = {}
        for shard, rows in index.groupby(plan_shards(index, config["data"]["shard_size"]).values, sort=False):
            volumes = rows["volume"].tolist()
            plan[shard] = (volumes, rows["path"].tolist(), shard_rows_sha256(index, volumes))
        _SHARD_PLAN[key] = plan
    return _SHARD_PLAN[key]


def shard_raw(wildcards):
    """The raw files a shard reads; a generated file is represented by its directory (a directory output)."""
    generated = f"{RESULTS}/raw/embedded"
    paths = shard_plan(wildcards.dataset)[wildcards.shard][1]
    return sorted({generated if p.startswith(f"{generated}/") else p for p in paths})


def split_datasets(split):
    """The datasets a split file draws from: train and val only from in_distribution data (ood and test datasets
    are test only), so their gather jobs never wait on, or rerun for, another dataset's index."""
    datasets = config["data"]["datasets"]
    return [name for name in DATASETS if split == "test" or datasets[name]["role"] == "in_distribution"]


def split_members(split):
    """[(dataset, shard, volume)] of one split, in index order, as `ldpm split` assigns them (from the index files
    of split_datasets(split) only: ood and test datasets change no train / val assignment)."""
    import pandas as pd
    from ldpm.data.preprocess import assign_splits, read_index_text

    files = [checkpoints.index.get(dataset=name).output[0] for name in split_datasets(split)]
    parsed = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)  # as `ldpm split` reads them
    text = pd.concat([read_index_text(f) for f in files], ignore_index=True)  # names as the shard plan has them
    shard_of = {v: shard for name in split_datasets(split) for shard, plan in shard_plan(name).items() for v in plan[0]}
    fractions = config["data"]["split"]
    assigned = assign_splits(parsed, fractions["val_fraction"], fractions["test_fraction"], SEED)
    rows = text[(assigned == split).to_numpy()]
    return [(d, shard_of[v], v) for d, v in zip(rows["dataset"], rows["volume"])]


def split_shard_files(wildcards):
    """The shard files that hold a volume of the job's split."""
    shards = dict.fromkeys((d, shard) for d, shard, _ in split_members(wildcards.split))
    return [f"{RESULTS}/data/shards/{d}/{shard}.{ext}" for d, shard in shards for ext in ("h5", "csv")]


def split_members_sha256(wildcards):
    """The gather job's params: which volumes (from which shards) its split holds. Its splits.csv input is ancient,
    so a splits.csv rewritten for another split's sake (e.g. a new test dataset) does not rerun it."""
    import hashlib

    return hashlib.sha256(json.dumps(split_members(wildcards.split)).encode()).hexdigest()
