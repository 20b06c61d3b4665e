"""The training progress bar counts iterations: with max_iters, Lightning's own bar would take
the optimizer steps left (two per CycleGAN iteration) as the last epoch's total, and Rich's
would name the epoch "n/-2"."""
from types import SimpleNamespace

import hydra
import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

from conftest import NO_EVALUATION
from src.callbacks.progress import IterationRichProgressBar, IterationTQDMProgressBar
from src.utils.run import build_callbacks, build_trainer_kwargs, order_callbacks, run_training
from test_scale_out import fit_with_callbacks


def fake_trainer(max_epochs: int, max_steps: int, global_step: int, batches: int, per_iteration: int = 2):
    return SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, global_step=global_step,
                           num_training_batches=batches,
                           lightning_module=SimpleNamespace(optimizer_steps_per_iter=per_iteration))


@pytest.mark.parametrize("bar_class", [IterationRichProgressBar, IterationTQDMProgressBar])
def test_the_epochs_total_is_the_iterations_left(bar_class):
    bar = bar_class()
    bar._trainer = fake_trainer(max_epochs=-1, max_steps=20, global_step=14, batches=100)
    assert bar.total_train_batches == 3            # (20 - 14) optimizer steps / 2 per iteration
    bar._trainer = fake_trainer(max_epochs=-1, max_steps=200, global_step=0, batches=100)
    assert bar.total_train_batches == 100          # the epoch ends first
    bar._trainer = fake_trainer(max_epochs=5, max_steps=-1, global_step=0, batches=100)
    assert bar.total_train_batches == 100


@pytest.mark.parametrize("bar_class", [IterationRichProgressBar, IterationTQDMProgressBar])
def test_the_bar_shows_the_losses_without_the_loggers_version(bar_class):
    """Rich formatted the version as a loss: "v_num: 0.000"."""
    bar = bar_class()
    trainer = SimpleNamespace(loggers=[SimpleNamespace(version=0)], progress_bar_metrics={"train/G": 1.5})
    assert bar.get_metrics(trainer, None) == {"train/G": 1.5}


def test_rich_names_the_epoch_alone_when_training_to_max_iters():
    bar = IterationRichProgressBar()
    bar._trainer = fake_trainer(max_epochs=-1, max_steps=20, global_step=0, batches=10)
    assert bar._get_train_description(3) == "Epoch 3"
    bar._trainer = fake_trainer(max_epochs=5, max_steps=-1, global_step=0, batches=10)
    assert bar._get_train_description(3).strip() == "Epoch 3/4"


class TotalAtEpochStart(pl.Callback):
    def __init__(self):
        self.totals = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.totals.append(trainer.progress_bar_callback.total_train_batches)


def test_a_run_shows_its_iterations(train_cfg, tmp_path):
    cfg = train_cfg("model=cyclegan", "max_iters=3", "data.max_dataset_size=8", "trainer.enable_progress_bar=true",
                    *NO_EVALUATION)
    recorder = TotalAtEpochStart()
    _, trainer = fit_with_callbacks(cfg, recorder)
    assert isinstance(trainer.progress_bar_callback, (IterationRichProgressBar, IterationTQDMProgressBar))
    assert recorder.totals == [3]                  # Lightning's bar: min(8 batches, 6 optimizer steps)


def test_no_bar_is_added_when_it_is_off_or_configured(train_cfg):
    assert not any(isinstance(cb, ProgressBar) for cb in build_callbacks(train_cfg("model=cyclegan"), None))
    cfg = train_cfg("model=cyclegan", "trainer.enable_progress_bar=true",
                    "+callbacks.bar._target_=pytorch_lightning.callbacks.TQDMProgressBar")
    bars = [cb for cb in build_callbacks(cfg, None) if isinstance(cb, ProgressBar)]
    assert len(bars) == 1 and type(bars[0]) is TQDMProgressBar


class BarTotalAtBatchEnd(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = trainer.progress_bar_callback
        if isinstance(bar, TQDMProgressBar):
            total = bar.train_progress_bar.total
        else:   # Rich: the training task's total
            total = next(task.total for task in bar.progress.tasks if task.id == bar.train_progress_bar_id)
        self.seen.append((batch_idx, total))


@pytest.mark.parametrize("bar_class", ["IterationTQDMProgressBar", "IterationRichProgressBar"])
@pytest.mark.parametrize("stopped_at, expected", [
    (2, [(2, 5), (3, 5), (4, 5)]),   # inside the first epoch of 8: 2 batches before the resume + 3 left
    (8, [(0, 3), (1, 3), (2, 3)]),   # at its last batch: the next epoch, 3 iterations left
])
def test_a_run_resumed_inside_an_epoch_shows_the_epochs_total(train_cfg, tmp_path, stopped_at, expected, bar_class):
    """Lightning calls no epoch-start hook in an epoch it resumes inside, where the bar takes its
    total: the bar counts the epoch's batches done before the resume and the iterations left."""
    common = ["model=cyclegan", "data.max_dataset_size=8", "trainer.enable_progress_bar=true",
              f"+callbacks.bar._target_=src.callbacks.progress.{bar_class}", *NO_EVALUATION]
    first = train_cfg(*common, f"max_iters={stopped_at}")
    run_training(first)
    cfg = train_cfg(*common, f"max_iters={stopped_at + 3}")
    cfg.paths.output_dir = str(tmp_path / "resumed")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    recorder = BarTotalAtBatchEnd()
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), logger=False,
                         callbacks=order_callbacks(build_callbacks(cfg, None) + [recorder]))
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data),
                ckpt_path=f"{first.paths.output_dir}/checkpoints/last.ckpt")
    assert recorder.seen == expected


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "src.callbacks.progress_log"]


@pytest.mark.parametrize("length, position", [
    (("max_iters=3",), r"iteration 3/3 \(100.0%\)"),
    (("max_iters=null", "trainer.max_epochs=2", "data.max_dataset_size=2"), r"iteration 4, epoch 2.00/2"),
])
def test_a_batch_job_logs_its_progress_where_no_bar_is_drawn(train_cfg, caplog, length, position):
    """Rich's bar draws only on a terminal: a SLURM job's output showed no progress until the end.
    Where stdout is not a terminal (as under pytest) rank zero logs a line every
    every_n_seconds, and one after the first iteration and one at the end."""
    import re
    with caplog.at_level("INFO", logger="src.callbacks.progress_log"):
        run_training(train_cfg("model=pix2pix", "data=shapes_paired", *length, *NO_EVALUATION,
                               "callbacks.progress_log.every_n_seconds=3600"))
    lines = progress_lines(caplog)
    assert len(lines) == 2 and lines[0].startswith("iteration 1")   # the first iteration, then the end
    assert "ETA" not in lines[0]   # one iteration's pace (the loaders' start-up in it) tells nothing
    assert re.match(position, lines[-1]), lines[-1]
    assert re.search(r"\| [\d.e+-]+ it/s, [\d.e+-]+ images/s \| ETA 00:00:00 \| .*G_adv [\d.e+-]+", lines[-1]), lines[-1]


def test_the_progress_line_counts_a_kimg_budget_and_stays_off_beside_a_drawn_bar(train_cfg, caplog, monkeypatch):
    with caplog.at_level("INFO", logger="src.callbacks.progress_log"):
        run_training(train_cfg("model=stylegan", "max_iters=null", "max_kimg=0.004", *NO_EVALUATION,
                               "callbacks.progress_log.every_n_seconds=1e-9"))
    lines = progress_lines(caplog)
    assert len(lines) >= 2 and all(", kimg " in line for line in lines)
    assert "kimg 0.0/0.0" not in lines[-1] and "(100.0%)" in lines[-1]
    caplog.clear()
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)   # a terminal: the bar shows it
    with caplog.at_level("INFO", logger="src.callbacks.progress_log"):
        run_training(train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=2", *NO_EVALUATION,
                               "trainer.enable_progress_bar=true", "callbacks.progress_log.every_n_seconds=1e-9",
                               "callbacks.model_checkpoint.dirpath=${paths.output_dir}/terminal"))
    assert progress_lines(caplog) == []
    with pytest.raises(Exception, match=r"every_n_seconds=0 must be a positive number"):
        run_training(train_cfg("model=pix2pix", "data=shapes_paired", "callbacks.progress_log.every_n_seconds=0"))
