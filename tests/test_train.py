"""The shared training loop: resume after an interruption ends at the same weights; bad checkpoints are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ldpm import LdpmError
from ldpm.baselines.unet import train_unet
from ldpm.train import EpochSampler, Trainer

HP = {"chans": 4, "num_pool_layers": 2, "drop_prob": 0.0, "lr": 1e-3, "batch_size": 4, "ckpt_every": 1}
MASKS = {"accelerations": [8], "center_fractions": [0.04]}


def test_resume_reaches_the_same_weights(prepared, tmp_path):
    train_unet({"train": prepared / "train.h5"}, tmp_path / "full.safetensors", tmp_path / "ck_full", HP | {"epochs": 2}, MASKS, 0, "cpu")
    # "killed" after epoch 1, then rerun with the same checkpoint directory
    train_unet({"train": prepared / "train.h5"}, tmp_path / "part.safetensors", tmp_path / "ck_resume", HP | {"epochs": 1}, MASKS, 0, "cpu")
    history = train_unet({"train": prepared / "train.h5"}, tmp_path / "resumed.safetensors", tmp_path / "ck_resume",
                         HP | {"epochs": 2}, MASKS, 0, "cpu")
    full, resumed = load_file(tmp_path / "full.safetensors"), load_file(tmp_path / "resumed.safetensors")
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0)
    part = load_file(tmp_path / "part.safetensors")
    assert any(not torch.equal(part[k], full[k]) for k in full), "the second epoch changed the weights"
    assert [h["step"] for h in history] == list(range(len(history)))


def test_epoch_sampler_covers_each_item_once_per_epoch():
    sampler = EpochSampler(n_items=10, batch_size=4, seed=1)
    seen = [i for step in range(sampler.steps_per_epoch) for i in sampler.batch(step)]
    assert set(seen) == set(range(10)) and sampler.steps_per_epoch == 3


def test_epoch_sampler_fills_every_batch_even_from_a_set_smaller_than_half_a_batch():
    """A batch always has batch_size items (a rehearsal has 1 training slice at batch 8): the set is cycled."""
    for n_items, batch_size in ((1, 8), (3, 8), (5, 8), (10, 4)):
        sampler = EpochSampler(n_items=n_items, batch_size=batch_size, seed=2)
        for step in range(3 * sampler.steps_per_epoch):
            batch = sampler.batch(step)
            assert len(batch) == batch_size and set(batch) <= set(range(n_items)), (n_items, batch_size, step)
        assert len(set(EpochSampler(n_items, batch_size, 2).batch(0))) == min(n_items, batch_size)


def test_epoch_sampler_batches_hold_one_group_and_cover_each_group_per_epoch():
    """Multicoil slices of different raw widths cannot share a batch: with groups, every batch is one group's,
    each epoch covers every item, the batches come in a shuffled order (not group after group), and one group is
    the plain sampler exactly."""
    groups = np.array([320] * 9 + [368] * 5 + [396] * 2)
    sampler = EpochSampler(n_items=16, batch_size=4, seed=3, groups=groups)
    assert sampler.steps_per_epoch == 3 + 2 + 1
    for epoch in range(2):
        batches = [sampler.batch(epoch * 6 + i) for i in range(6)]
        assert all(len(set(groups[b])) == 1 and len(b) == 4 for b in batches)
        assert set(np.concatenate(batches)) == set(range(16))
    orders = [[groups[sampler.batch(e * 6 + i)][0] for i in range(6)] for e in range(4)]
    assert any(o != sorted(o) for o in orders) and len({tuple(o) for o in orders}) > 1
    plain, one = EpochSampler(10, 4, 1), EpochSampler(10, 4, 1, groups=np.full(10, 320))
    assert all(np.array_equal(plain.batch(i), one.batch(i)) for i in range(9))


def test_corrupted_checkpoint_is_named(tmp_path):
    model = torch.nn.Linear(2, 2)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "last.pt").write_bytes(b"garbage")
    trainer = Trainer({"m": model}, {}, tmp_path / "ck", total_steps=1)
    with pytest.raises(LdpmError, match="last.pt: corrupted checkpoint"):
        trainer.run(lambda step: {})


def test_a_checkpoint_from_other_settings_or_inputs_is_not_resumed(prepared, tmp_path, caplog):
    """Snakemake reruns a training job whose hp or inputs changed; its checkpoint must then not be resumed."""
    import json
    import logging
    import shutil

    from ldpm.cli import main

    caplog.set_level(logging.INFO)

    def train(hp, ckpt, out, data=prepared / "train.h5"):
        return main(["train", "unet", "--inputs", json.dumps({"train": str(data)}), "--out", str(out),
                     "--ckpt-dir", str(ckpt), "--hp", json.dumps(hp), "--masks", json.dumps(MASKS), "--device", "cpu"])

    def assert_same_weights(x, y):
        x, y = load_file(tmp_path / x), load_file(tmp_path / y)
        assert x and x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(y[k], x[k], rtol=0, atol=0, msg=lambda m: f"{k}: {m}")

    ckpt = tmp_path / "ck"
    assert train(HP | {"epochs": 1}, ckpt, tmp_path / "a.safetensors") == 0
    # same run again: resumes the finished checkpoint, nothing to train, same weights
    assert train(HP | {"epochs": 1}, ckpt, tmp_path / "b.safetensors") == 0
    assert "resumed unet" in caplog.text and "set aside" not in caplog.text
    assert_same_weights("a.safetensors", "b.safetensors")
    # other hp: starts over and ends where a fresh run with those hp ends
    assert train(HP | {"epochs": 1, "lr": 3e-3}, ckpt, tmp_path / "c.safetensors") == 0
    assert "set aside as last.stale.pt" in caplog.text and (ckpt / "last.stale.pt").exists()
    assert train(HP | {"epochs": 1, "lr": 3e-3}, tmp_path / "fresh", tmp_path / "d.safetensors") == 0
    assert_same_weights("c.safetensors", "d.safetensors")
    a, c = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "c.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a), "another lr gives other weights: the comparison can fail"
    # a changed input file (same path, other bytes) also starts over
    caplog.clear()
    data = tmp_path / "train.h5"
    shutil.copy(prepared / "train.h5", data)
    assert train(HP | {"epochs": 1, "lr": 3e-3}, tmp_path / "ck2", tmp_path / "e.safetensors", data) == 0
    with open(data, "ab") as fh:
        fh.write(b"\0")  # h5 ignores trailing bytes; the sha256 does not
    assert train(HP | {"epochs": 1, "lr": 3e-3}, tmp_path / "ck2", tmp_path / "f.safetensors", data) == 0
    assert "set aside" in caplog.text


def test_weights_of_the_same_tensors_and_metadata_are_the_same_bytes(tmp_path):
    """A resumed or rerun stage re-saves its weights; identical tensors and metadata must give an identical file, or
    the sha256 in a downstream model's checkpoint identity changes and that model trains again from scratch
    (safetensors itself writes the metadata keys in a random order)."""
    from safetensors import safe_open

    from ldpm.weights import save_weights

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Conv2d(2, 2, 3).half())
    metadata = {f"key{i}": f"value {i}" for i in range(8)} | {"scaling_factor": "0.18215", "é": "ü/\\"}
    files = [tmp_path / f"w{i}.safetensors" for i in range(6)]
    for path in files:
        save_weights(module, path, metadata=dict(reversed(metadata.items())))
    assert len({p.read_bytes() for p in files}) == 1
    with safe_open(str(files[0]), "pt") as fh:
        assert fh.metadata() == metadata
        for name, tensor in module.state_dict().items():
            assert torch.equal(fh.get_tensor(name), tensor)
