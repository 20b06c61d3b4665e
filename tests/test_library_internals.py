"""The private names of the pinned libraries that this code reads, patches or overrides.

A release that renames one must fail here, naming the name and the module that relies on it:
elsewhere it fails deep in a run, or not at all (an override of a renamed hook is never called,
so Lightning would delete metrics.csv on resume; a renamed attribute read with getattr gives its
default). Upgrading a pin means updating these modules, then this list."""
import importlib

import pytest
import pytorch_lightning as pl
import torch

# (module, attribute path, the module of ours that relies on it)
PRIVATE_NAMES = [
    ("pytorch_lightning.callbacks", "ModelCheckpoint._monitor_candidates", "src/callbacks/checkpoint.py"),
    ("pytorch_lightning.callbacks", "ModelCheckpoint._should_skip_saving_checkpoint", "src/callbacks/checkpoint.py"),
    ("pytorch_lightning.callbacks", "ModelCheckpoint._save_topk_checkpoint", "src/callbacks/checkpoint.py"),
    ("pytorch_lightning.callbacks", "ModelCheckpoint._save_last_checkpoint", "src/callbacks/checkpoint.py"),
    ("pytorch_lightning.trainer.connectors.checkpoint_connector", "_CheckpointConnector.dump_checkpoint",
     "src/callbacks/checkpoint.py"),
    ("pytorch_lightning.trainer.connectors.signal_connector", "_SignalConnector.register_signal_handlers",
     "src/callbacks/stop_signals.py"),
    ("pytorch_lightning.utilities.imports", "_RICH_AVAILABLE", "src/callbacks/progress.py"),
    ("pytorch_lightning.callbacks.progress.rich_progress", "RichProgressBar._get_train_description",
     "src/callbacks/progress.py"),
    ("pytorch_lightning.strategies.launchers.subprocess_script", "_SubprocessScriptLauncher",
     "src/utils/ddp_multirun.py"),
    ("pytorch_lightning.strategies.launchers.subprocess_script", "_launch_process_observer",
     "src/utils/ddp_multirun.py"),
    ("pytorch_lightning.callbacks", "LearningRateMonitor._extract_stats", "src/callbacks/learning_rates.py"),
    ("pytorch_lightning.loggers.csv_logs", "ExperimentWriter._check_log_dir_exists", "src/utils/csv_logger.py"),
    ("pytorch_lightning.loggers.csv_logs", "ExperimentWriter._record_new_keys", "src/utils/csv_logger.py"),
    ("pytorch_lightning.loggers.csv_logs", "ExperimentWriter._rewrite_with_new_header", "src/utils/csv_logger.py"),
    ("pytorch_lightning.loggers", "CSVLogger._get_next_version", "src/utils/logger_versions.py"),
    ("pytorch_lightning.loggers", "TensorBoardLogger._get_next_version", "src/utils/logger_versions.py"),
    ("hydra.initialize", "get_gh_backup", "src/utils/training_config.py"),
    ("hydra.initialize", "restore_gh_from_backup", "src/utils/training_config.py"),
]


def attribute(owner, path: str):
    for name in path.split("."):
        owner = getattr(owner, name)
    return owner


@pytest.mark.parametrize("module, path, user", PRIVATE_NAMES, ids=[p for _, p, _ in PRIVATE_NAMES])
def test_the_private_names_this_code_relies_on_exist(module, path, user):
    try:
        attribute(importlib.import_module(module), path)
    except AttributeError:
        pytest.fail(f"{module}.{path} is gone in this release: update {user}, which relies on it")


def test_the_private_instance_state_this_code_relies_on_exists():
    """Set in constructors, so asked of instances."""
    from hydra.core.utils import JobReturn
    from pytorch_lightning.strategies import DDPStrategy
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    instances = {
        "ModelCheckpoint()._every_n_train_steps (src/callbacks/checkpoint.py)":
            lambda: pl.callbacks.ModelCheckpoint()._every_n_train_steps,
        "ModelCheckpoint()._last_checkpoint_saved (src/callbacks/checkpoint.py)":
            lambda: pl.callbacks.ModelCheckpoint()._last_checkpoint_saved,
        "Trainer._accelerator_connector.cluster_environment (src/callbacks/stop_signals.py)":
            lambda: trainer._accelerator_connector.cluster_environment,
        "Trainer._signal_connector.received_sigterm (src/callbacks/stop_signals.py)":
            lambda: trainer._signal_connector.received_sigterm,
        "Trainer._checkpoint_connector (src/callbacks/checkpoint.py)": lambda: trainer._checkpoint_connector,
        "DDPStrategy._start_method (src/utils/run.py)": lambda: DDPStrategy(start_method="fork")._start_method,
        "GradScaler._per_optimizer_states (src/models/loss_scaling.py)":
            lambda: torch.amp.GradScaler("cpu")._per_optimizer_states,
        "JobReturn._return_value (src/utils/sweep_summary.py)": lambda: JobReturn()._return_value,
    }
    missing = []
    for name, read in instances.items():
        try:
            read()
        except AttributeError:
            missing.append(name)
    assert not missing, f"gone in this release: {missing}: update the modules named"
    assert DDPStrategy(start_method="fork")._start_method == "fork"   # read with getattr: a rename reads None
