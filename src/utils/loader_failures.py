"""A data loader's workers failing, told in the settings a user can change (train.py, eval.py):
torch's own words name a file in /dev/shm or a killed process, not what to do."""
from __future__ import annotations

#: how torch words a loader worker's shared memory running out (/dev/shm, where workers hand
#: batches over; a container's default is 64 MB)
SHARED_MEMORY_WORDS = ("unable to write to file </torch_", "out of shared memory", "insufficient shared memory")
SHARED_MEMORY_HINT = (
    "The data loader's workers ran out of shared memory (/dev/shm, where they hand batches over to the {process} "
    "process; a container's default is 64 MB). Give the container more (docker run --shm-size=8g, or --ipc=host), "
    "or use fewer workers ({key}data.num_workers{workers}) or smaller batches.")
#: torch's words for a loader worker that SIGKILL stopped: the kernel's OOM killer, mostly
KILLED_WORKER_WORDS = "is killed by signal: Killed"
KILLED_WORKER_HINT = (
    "A data loader worker was killed (SIGKILL): most often the kernel's out-of-memory killer, at the memory limit "
    "of the machine, the container or the job (dmesg, or sacct's MaxRSS and State=OUT_OF_MEMORY, say). Each worker "
    "holds its own copy of what the dataset keeps: use fewer workers ({key}data.num_workers{workers}){cache}, or ask "
    "for more memory.")


#: a setting's value the caller does not know (eval.py's data node is the run's, read later)
UNKNOWN = object()


def loader_failure_hint(error: BaseException, process: str, num_workers=UNKNOWN, cache_decoded=UNKNOWN,
                        key_prefix: str = "") -> str | None:
    """What to change where `error` is a loader worker's failure (None where it is not); the
    settings' values where the caller knows them (`process`: "training", "evaluation";
    `key_prefix`: "++" where the data node is the run's, as in eval.py)."""
    workers = "" if num_workers is UNKNOWN else f", now {num_workers}"
    # The cache's key is in few data configs (`++`), and it is named only where the cache may be on.
    if cache_decoded is UNKNOWN:
        cache = ", turn off the decoded-image cache where it is on (++data.cache_decoded=false)"
    else:
        cache = ", turn off the decoded-image cache (++data.cache_decoded=false)" if cache_decoded else ""
    if any(words in str(error) for words in SHARED_MEMORY_WORDS):
        return SHARED_MEMORY_HINT.format(process=process, workers=workers, key=key_prefix)
    if KILLED_WORKER_WORDS in str(error):
        return KILLED_WORKER_HINT.format(workers=workers, cache=cache, key=key_prefix)
    return None
