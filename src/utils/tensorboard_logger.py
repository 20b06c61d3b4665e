"""Lightning's TensorBoard logger, continued by a resumed run (as the CSV logger is).

Without a `version` it writes into the run folder's latest `version_N`, so TensorBoard shows a
requeued or resumed run as one run. Its event files record every step of the run they come from,
a stopped run's work past its checkpoint too: a resumed run's writer starts with a purge step
(SummaryWriter's `purge_step`), from which TensorBoard drops the earlier files' events, so a run
rolled back to an earlier checkpoint shows its new branch alone. The purge starts past the
checkpoint's own step, whose evaluation (logged before the checkpoint was saved) the resumed run
does not repeat; where that step is a logged one too (`log_every_n_steps=1`), its losses show
twice. A new run in a folder that
holds an earlier run's events purges them all (as the CSV logger sets its rows aside).
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import TensorBoardLogger

from src.models.checkpoint_fit import checkpoint_iteration
from src.utils.logger_versions import latest_version


class ContinuedTensorBoardLogger(TensorBoardLogger):
    def __init__(self, *args, version: int | str | None = None, **kwargs):
        super().__init__(*args, version=version, **kwargs)
        if version is None:
            self._version = latest_version(self)


TARGET = f"{ContinuedTensorBoardLogger.__module__}.{ContinuedTensorBoardLogger.__qualname__}"


def purge_step(ckpt_path: str | None, checkpoint: dict | None, model) -> int | None:
    """The step from which a run's TensorBoard writer purges earlier events: past the iteration
    `checkpoint` (the file the run resumes from) had finished, 0 for a new run; None for a
    checkpoint Lightning resolves (a keyword or URL), whose step is not known before the fit."""
    if ckpt_path is None:
        return 0
    if checkpoint is None:
        return None
    return checkpoint_iteration(checkpoint, model) + 1


def with_purge_step(logger_cfg: DictConfig | None, step: int | None) -> DictConfig | None:
    """A copy of the logger config whose TensorBoard logger purges the events from `step` on."""
    nodes = [name for name, node in (logger_cfg or {}).items()
             if isinstance(node, DictConfig) and node.get("_target_") == TARGET and node.get("purge_step") is None]
    if step is None or not nodes:
        return logger_cfg
    logger_cfg = OmegaConf.create(OmegaConf.to_container(logger_cfg, resolve=True))
    with open_dict(logger_cfg):
        for name in nodes:
            logger_cfg[name].purge_step = step
    return logger_cfg
