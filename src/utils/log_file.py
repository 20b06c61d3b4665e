"""The error that ended a command, in the run's log file."""
import logging

log = logging.getLogger(__name__)


def log_file_handlers() -> list[logging.FileHandler]:
    """The file handlers of the process' logging (none under hydra/job_logging=disabled)."""
    return [handler for handler in logging.getLogger().handlers if isinstance(handler, logging.FileHandler)]


def error_into_the_log_file(error: BaseException, command: str) -> None:
    """`error`, with its traceback, in the log files of the process' logging (Hydra's
    `<run dir>/<job>.log`), not on the console: Hydra prints it there, and there only, so the
    log of a batch job or of a sweep's failed job ended at its last message, without the error,
    and a sweep's console shows only its first failed job's error, after the last job."""
    files = log_file_handlers()
    if not files:
        return
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s stopped with this error:", (command,),
                            (type(error), error, error.__traceback__))
    for handler in files:
        if record.levelno >= handler.level:
            handler.handle(record)
