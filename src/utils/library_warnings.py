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


def silence_known_library_noise() -> None:
    for message, category, module in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    rank_zero = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER)
    if not any(isinstance(f, LightningTips) for f in rank_zero.filters):
        rank_zero.addFilter(LightningTips())
