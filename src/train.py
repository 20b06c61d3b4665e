"""Train a translation model: `python src/train.py model=cyclegan data=horse2zebra [...]`.

Composes conf/train.yaml, instantiates data, model, callbacks, loggers and trainer, fits, saves
and returns the metrics (the value of `optimized_metric` for sweepers).
"""
import logging
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python src/train.py` from the root

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.utils.allocator import configure_allocator  # noqa: E402
from src.utils.ddp_multirun import INTERRUPT_EXIT_STATUS, argv_for_launched_rank  # noqa: E402
from src.utils.library_warnings import library_output_into_the_log  # noqa: E402
from src.utils.objective import objective_value, sweeper_direction  # noqa: E402

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    library_output_into_the_log()
    configure_allocator(cfg.get("allocator", "default"))
    from src.callbacks.optimized_metric import closest_names   # these load torch: only once the allocator is set
    from src.models.divergence import divergence_of
    from src.utils.run import release_failed_run, run_training
    from src.utils.run_record import earlier_starts
    from src.utils.run_results import run_folder, write_failure
    from src.utils.hydra_runtime import is_rank_zero
    from src.utils.log_file import error_into_the_log_file
    from src.utils.sweep_summary import refresh_the_sweeps_table

    metric_name = cfg.get("optimized_metric")
    started = time.time()
    folder = run_folder(cfg)
    starts_before = len(earlier_starts(folder)) if folder is not None else 0
    try:
        metrics = run_training(cfg)
    except KeyboardInterrupt:
        # Stopped by Ctrl-C (interrupted.ckpt written): the command ends as a shell ends a process
        # SIGINT stopped, without a traceback of wherever the interrupt landed.
        refresh_the_sweeps_table()
        raise SystemExit(INTERRUPT_EXIT_STATUS) from None
    except SystemExit:   # SIGTERM (143), interrupted.ckpt written: a sweep's basic launcher ends here too
        refresh_the_sweeps_table()
        raise
    except Exception as error:
        # In a search, a diverged trial is the worst value (the study goes on; its checkpoints
        # stay finite); an error would end the whole study (the sweeper fails on any error).
        diverged = divergence_of(error)
        release_failed_run(error)   # a multirun goes on to its next jobs, Hydra keeping a raised error
        searched = diverged is not None and bool(metric_name) and sweeper_direction() is not None
        if is_rank_zero() and folder is not None:
            # The run folder's record says what happened, a single run's as a sweep job's: a script
            # collecting results over many runs finds "failed" and the error, not a missing file or
            # an earlier start's record. (A search's diverged trial ends "completed" for Hydra.)
            # An earlier start's record is replaced by this start's failure once this start got
            # past its checks (`record_start` runs after them); one they refused (another job's
            # settings, in a sweep extended into the same folder) leaves the record of the run
            # whose checkpoints are there.
            recorded = len(earlier_starts(folder)) > starts_before
            try:
                write_failure(folder, diverged if searched else error, status="diverged" if searched else "failed",
                              replace_older_than=started if recorded else None)
            except OSError as unwritable:   # the run's own error is the one to see
                log.warning("The failure's record could not be written into %s: %s", folder, unwritable)
        if not searched:
            error_into_the_log_file(error, "Training")
            raise
        return objective_value(metric_name, math.nan, sweeper_direction())
    if not metric_name:
        return None
    if metric_name not in metrics:
        error = ValueError(f"optimized_metric={metric_name} was not logged by this run "
                           f"({closest_names(metric_name, metrics)}): set optimized_metric to one of the names this "
                           f"run logs")
        if is_rank_zero() and folder is not None:   # (its record said completed; the job fails)
            write_failure(folder, error, replace_older_than=started, after_training=True)
        raise error
    return objective_value(metric_name, float(metrics[metric_name]), sweeper_direction())


if __name__ == "__main__":
    # A DDP rank Lightning launched for one job of a multirun joins that job instead of
    # starting a sweep of its own (src/utils/ddp_multirun.py).
    sys.argv = argv_for_launched_rank(sys.argv) or sys.argv
    main()
