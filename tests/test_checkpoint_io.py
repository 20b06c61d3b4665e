"""Checkpoint files are written whole: through a synced temporary file beside them, renamed over
the old one, never through the system's temp folder (on another filesystem the move is a copy
that a kill cuts short)."""
import tempfile

import hydra
import pytest
import pytorch_lightning as pl
import torch

from conftest import NO_EVALUATION, last_checkpoint
from src.utils.checkpoint_io import DurableCheckpointIO, write_whole
from src.utils.run import build_trainer_kwargs


def test_a_checkpoint_is_written_beside_its_target_not_in_the_temp_folder(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    # Lightning's own save (fsspec) makes its temporary file in the temp folder: here that fails
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no_such_folder"))
    with pytest.raises(FileNotFoundError):
        pl.plugins.TorchCheckpointIO().save_checkpoint({"step": 1}, target)
    DurableCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    loaded = torch.load(target, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]   # no temporary file left


def test_a_write_that_fails_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    target = tmp_path / "last.ckpt"
    DurableCheckpointIO().save_checkpoint({"step": 1}, target)

    def fail_halfway(stream):
        stream.write(b"PK\x03\x04 the start of a zip archive")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_whole(target, fail_halfway)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_the_sync_before_the_rename_holds_a_handle_that_may_write(tmp_path, monkeypatch):
    """Windows' fsync (FlushFileBuffers) refuses a read-only handle with EBADF: every synced
    write (checkpoints, run records, metrics) failed there. Here a sync of such a handle fails."""
    import os
    fcntl = pytest.importorskip("fcntl")
    real_fsync = os.fsync

    def windows_fsync(descriptor):
        if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(9, "Bad file descriptor")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", windows_fsync)
    DurableCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 2}


def test_a_killed_writers_temporary_file_is_removed_by_the_next_save(tmp_path):
    """A process killed during a write leaves its temporary file (gigabytes for U-GAT-IT); the
    next save into the folder deletes it once it is untouched for STALE_TEMPORARY_SECONDS. A
    recent one may be another process's save in progress: it stays. The hidden name keeps them
    out of `*.ckpt` searches."""
    import os
    import time
    from src.utils.checkpoint_io import STALE_TEMPORARY_SECONDS
    stale = tmp_path / ".last.ckpt.0123abcd.tmp"
    never_again = tmp_path / ".crashed.ckpt.4567cdef.tmp"   # a name the run may never write again
    in_progress = tmp_path / ".last.ckpt.89abcdef.tmp"       # another job's save, in the same folder
    long_ago = time.time() - STALE_TEMPORARY_SECONDS - 5
    for temporary in (stale, never_again, in_progress):
        temporary.write_bytes(b"cut short")
    for temporary in (stale, never_again):
        os.utime(temporary, (long_ago, long_ago))
    assert not list(tmp_path.glob("*.ckpt"))
    DurableCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [in_progress.name, "last.ckpt"]


def test_a_folder_that_cannot_be_synced_is_said_once_and_the_save_stands(tmp_path, monkeypatch, caplog):
    """Some network and FUSE file systems refuse to sync a folder (EINVAL): the file is written,
    synced and renamed already, and the run must not die at its first checkpoint."""
    import errno
    import logging
    import os

    def refuse(path, flags, *args):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "open", refuse)
    with caplog.at_level(logging.WARNING):
        for step in (1, 2):
            DurableCheckpointIO().save_checkpoint({"step": step}, tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 2}
    assert caplog.text.count("Could not sync the folder") == 1


@pytest.mark.parametrize("trainer", ["default", "ddp_sim"])
def test_the_trainer_of_a_run_saves_through_it(train_cfg, trainer):
    """On one device and under DDP, where only rank zero writes through the strategy's IO."""
    import hydra

    cfg = train_cfg("model=cyclegan", *(["trainer=ddp_sim"] if trainer == "ddp_sim" else []))
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    built = pl.Trainer(**build_trainer_kwargs(cfg, model), logger=False)
    assert isinstance(built.strategy.checkpoint_io, DurableCheckpointIO)


def test_a_checkpoint_from_a_url_is_loaded_weights_only(train_cfg, monkeypatch):
    """Lightning unpickles a URL's checkpoint in full unless told otherwise (its local loads
    follow torch's weights-only default): a file from anyone could run code."""
    from src.utils.run import run_training

    asked = {}

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        asked.update(url=path, weights_only=weights_only)
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(DurableCheckpointIO, "load_checkpoint", load_checkpoint)
    with pytest.raises(ConnectionError):
        run_training(train_cfg("model=cyclegan", "max_iters=1", "ckpt_path=https://example.org/last.ckpt"))
    assert asked == {"url": "https://example.org/last.ckpt", "weights_only": True}


def test_resuming_from_a_file_a_weights_only_load_refuses_names_the_setting(train_cfg, tmp_path):
    """Resuming read the file with torch's own error, which names no setting and suggests
    weights_only=False; the same reading as eval's and translate's names ckpt_path instead."""
    from pathlib import Path

    from src.utils.run import run_training
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Path("/a")}, "global_step": 2}, foreign)
    with pytest.raises(ValueError, match=rf"ckpt_path={foreign} is whole but holds objects a weights-only load "
                                         r"refuses .*checkpoints src/train.py writes hold none"):
        run_training(train_cfg("model=cyclegan", "max_iters=1", f"ckpt_path={foreign}"))


def test_a_run_ending_between_periodic_saves_ends_with_a_checkpoint_of_its_last_iteration(train_cfg):
    """max_iters=3 with saves every 1000 iterations: the last iteration's batch end saves it.
    (Lightning's epoch end, had it saved instead, would have marked the unfinished epoch done.)"""
    cfg = train_cfg("max_iters=3", "callbacks.model_checkpoint.every_n_iters=1000", *NO_EVALUATION)
    checkpoint = last_checkpoint(cfg)
    steps_per_iter = hydra.utils.instantiate(cfg.model, _recursive_=False).optimizer_steps_per_iter
    assert checkpoint["global_step"] == 3 * steps_per_iter
    epoch = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert epoch["completed"] == 0   # (the smoke data's epoch is longer than 3 iterations)


def test_a_checkpoint_no_model_class_fits_names_the_classes_tried(tmp_path):
    """Outside a run folder, with no class recorded, the class is found from the weights: a file
    of none of them is named with what was tried, not a constructor's TypeError."""
    from src.utils.checkpoint_loading import load_model
    torch.save({"hyper_parameters": {"widths": 3}, "state_dict": {"net.weight": torch.zeros(1)}}, tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match=r"ckpt_path=.*c.ckpt: no model class fits this checkpoint; tried "
                                         r".*CycleGAN \(other hyperparameters\)"):
        load_model(tmp_path / "c.ckpt")


@pytest.mark.parametrize("model, shown", [("stylegan", "stylegan (ProGAN)"), ("dcgan", "dcgan (NoiseGAN)"),
                                          ("cyclegan", "CycleGAN")])
def test_a_checkpoint_names_the_config_its_model_class_trained(train_cfg, tmp_path, model, shown):
    """One class trains several configs (ProGAN: StyleGAN; NoiseGAN: DCGAN, LSGAN, WGAN-GP ...):
    eval.py's table row and the load log named a StyleGAN run "ProGAN"."""
    from src.utils.checkpoint_loading import load_model
    overrides = ("max_iters=null", "max_kimg=0.004") if model == "stylegan" else ("max_iters=1",)
    cfg = train_cfg(f"model={model}", *overrides, *NO_EVALUATION)
    assert last_checkpoint(cfg)["model_name"] == model
    assert load_model(f"{cfg.paths.output_dir}/checkpoints/last.ckpt").display_name() == shown
