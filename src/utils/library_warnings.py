"""Warnings and messages of the libraries that a user of this codebase cannot act on, silenced one
by one: each entry is one known message from one module, so anything else a library says still
reaches the user."""
import logging
import warnings

#: (message regex, category, regex of the module that issues it)
KNOWN_NOISE = (
    # Lightning 2.6.6 (the latest release) builds its CombinedLoader with torch's LeafSpec, which
    # torch 2.13 deprecates: every fit printed it.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree"),
    # An epoch shorter than log_every_n_steps (the quickstart's noise models: 32 batches of 64
    # at 50): Lightning counts the logging interval over epochs, so rows come every 50 iterations
    # all the same (its PossibleUserWarning, a UserWarning).
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning,
     r"pytorch_lightning\.loops\.fit_loop"),
    # The checkpoint folder of a resumed run holds its checkpoints, as it should; a run that starts
    # afresh in a used folder has the earlier ones set aside into abandoned_* first, and says so
    # (src/utils/auto_resume.py), so the folder is never empty then either.
    (r"Checkpoint directory .* exists and is not empty", UserWarning, r"pytorch_lightning\.callbacks\.model_checkpoint"),
)
#: the logger Lightning's rank-zero messages come through
LIGHTNING_RANK_ZERO_LOGGER = "pytorch_lightning.utilities.rank_zero"


class LightningTips(logging.Filter):
    """Lightning's "💡 Tip:" lines, which advertise its cloud services at every fit (its logger
    and checkpoint connectors), and its "`Trainer.fit` stopped: `max_steps=N` reached", which
    counts optimizer steps, two or three an iteration here: `max_iters=200000` read as
    "max_steps=400000" (the run's end says its iteration instead)."""

    SILENCED = ("💡 Tip:", "`Trainer.fit` stopped: `max_steps=")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.SILENCED)


#: the loggers Lightning gives a console handler of their own, not propagating, when imported
#: before logging is configured (eval.py's imports, before Hydra's logging): their lines missed
#: the run's log file
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric")


def library_output_into_the_log() -> None:
    """For the command-line tools, once Hydra has configured logging: Python warnings (ours, as
    the lr-schedule's, and the libraries') and Lightning's messages go to the run's log file as
    well as the console; they reached the console only."""
    if not logging.getLogger().handlers:   # (hydra/job_logging=disabled: Lightning's own handler stays)
        return
    logging.captureWarnings(True)
    for name in LIGHTNING_LOGGERS:
        library = logging.getLogger(name)
        if not library.propagate:
            for handler in [h for h in library.handlers if type(h) is logging.StreamHandler]:
                library.removeHandler(handler)   # (the root's console handler shows them now)
            library.propagate = True


def silence_known_library_noise() -> None:
    for message, category, module in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    rank_zero = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER)
    if not any(isinstance(f, LightningTips) for f in rank_zero.filters):
        rank_zero.addFilter(LightningTips())
