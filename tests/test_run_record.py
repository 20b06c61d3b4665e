"""Each start of a run leaves its own record, an unseeded run draws a seed it records, and one
process at a time trains in a run folder (src/utils/run_record.py, src/utils/folder_lock.py)."""
import errno
import logging
import os
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.utils import folder_lock
from src.utils.config_checks import MAX_SEED
from src.utils.folder_lock import FolderInUse, FolderLock
from src.utils.run import run_training
from tests.conftest import NO_EVALUATION


def starts_of(cfg) -> list[Path]:
    return sorted((Path(cfg.paths.output_dir) / "starts").iterdir())


def trained_weights(cfg) -> dict:
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=True)
    return checkpoint["state_dict"]


def test_an_unseeded_run_draws_a_seed_records_it_and_the_seed_repeats_the_run(train_cfg, tmp_path, caplog):
    """seed=null used to leave the run unrepeatable: its initial weights, dropout and pool picks
    came from a seed nobody saw. It now draws one, names it in the log and the start's record,
    and a run given that seed trains to the same weights."""
    unseeded = train_cfg("seed=null", "max_iters=2", *NO_EVALUATION)
    with caplog.at_level(logging.INFO, logger="src.utils.run_record"):
        run_training(unseeded)
    (start,) = starts_of(unseeded)
    record = OmegaConf.load(start / "start.yaml")
    assert record.seed_drawn is True and 0 <= record.seed <= MAX_SEED
    assert f"seed=null: this run draws seed={record.seed}" in caplog.text
    assert OmegaConf.load(start / "resolved.yaml").seed == record.seed
    assert unseeded.seed is None   # the caller's config is left as given

    repeated = train_cfg(f"seed={record.seed}", "max_iters=2", *NO_EVALUATION)
    repeated.paths.output_dir = str(tmp_path / "repeated")
    run_training(repeated)
    again = OmegaConf.load(starts_of(repeated)[0] / "start.yaml")
    assert again.seed == record.seed and again.seed_drawn is False
    first, second = trained_weights(unseeded), trained_weights(repeated)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    # Resumed with seed=null, it goes on as the run of its checkpoint's seed, and says and records
    # that one: a new draw named a seed that repeated nothing (passed, auto refused it)
    caplog.clear()
    resumed = train_cfg("seed=null", "max_iters=3", "ckpt_path=auto", *NO_EVALUATION)
    with caplog.at_level(logging.INFO, logger="src.utils.run_record"):
        run_training(resumed)
    later = OmegaConf.load(starts_of(resumed)[-1] / "start.yaml")
    assert later.seed == record.seed and later.seed_drawn is False
    assert f"seed=null: this run resumes the run of seed={record.seed}, its checkpoint's" in caplog.text
    assert "this run draws" not in caplog.text


def test_each_start_of_a_run_keeps_its_own_record(train_cfg):
    """A resume (here with a longer max_iters) rewrites what Hydra and the loggers keep; the
    first start's settings, seed and code revision stay in its own folder under starts/."""
    cfg = train_cfg("max_iters=2", *NO_EVALUATION)
    run_training(cfg)
    cfg.max_iters, cfg.ckpt_path = 4, "auto"
    run_training(cfg)
    first, second = starts_of(cfg)
    assert first.name.startswith("001_") and second.name.startswith("002_")
    assert OmegaConf.load(first / "resolved.yaml").max_iters == 2
    assert OmegaConf.load(second / "resolved.yaml").max_iters == 4
    records = [OmegaConf.load(start / "start.yaml") for start in (first, second)]
    assert records[0].resumed_from is None
    assert records[1].resumed_from == str(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    for record in records:
        assert record.seed == cfg.seed and record.pid == os.getpid() and record.code_revision
        assert record.packages.torch == record.torch.version == torch.__version__
    assert records[0].start == 1 and records[1].start == 2


def test_a_run_folder_in_use_is_refused_naming_the_run_that_holds_it(train_cfg):
    """Two runs in one folder (a job submitted again while the first still runs) would take turns
    replacing last.ckpt and mix their logs: the second is refused before it writes anything."""
    cfg = train_cfg("max_iters=2", *NO_EVALUATION)
    run_dir = Path(cfg.paths.output_dir)
    with FolderLock(run_dir, "a test's folder", ""):
        with pytest.raises(FolderInUse, match=rf"{run_dir} is in use by process {os.getpid()} on .*: a training "
                                              r"run's folder is written by one process at a time. Give this run "
                                              r"its own folder"):
            run_training(cfg)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "starts").exists()
    run_training(cfg)   # released with its holder: the folder trains
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    with FolderLock(run_dir, "a test's folder", ""):   # and the run released it when it ended
        pass


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_a_resumed_run_does_not_keep_its_checkpoint_mapped_while_it_trains(train_cfg, monkeypatch):
    """The checkpoint a run resumes from is read memory-mapped before the fit; kept mapped, the
    first save's replaced last.ckpt held its disk space until the run ended."""
    import pytorch_lightning as pl
    from src.utils import run

    cfg = train_cfg("max_iters=2", *NO_EVALUATION)
    run_training(cfg)
    checkpoint = str(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    mapped_while_training = []

    class MappedFiles(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            mapped_while_training.append(checkpoint in Path("/proc/self/maps").read_text())

    build_callbacks = run.build_callbacks
    monkeypatch.setattr(run, "build_callbacks", lambda *args: [*build_callbacks(*args), MappedFiles()])
    cfg.max_iters, cfg.ckpt_path = 4, "auto"
    run_training(cfg)
    assert mapped_while_training == [False, False]


def test_a_finished_run_leaves_nothing_of_its_model_alive(train_cfg, monkeypatch):
    """The trainer and the model hold each other: without a collection at the run's end they
    lived on (their GPU memory too) into a multirun's next job or a notebook's next cell."""
    import weakref
    import pytorch_lightning as pl
    from src.utils import run

    models = []

    class Holder(pl.Callback):
        def setup(self, trainer, pl_module, stage):
            models.append(weakref.ref(pl_module))

    build_callbacks = run.build_callbacks
    monkeypatch.setattr(run, "build_callbacks", lambda *args: [*build_callbacks(*args), Holder()])
    run_training(train_cfg("max_iters=1", *NO_EVALUATION))
    assert len(models) == 1 and models[0]() is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_neither_keeps_nor_drops_its_parents_folder_lock(tmp_path):
    """A DataLoader worker is a forked child: it shared the lock's open file, so one outliving its
    run (a notebook's failed fit) kept the folder locked against the next run."""
    wake_read, wake_write = os.pipe()
    started_read, started_write = os.pipe()
    with FolderLock(tmp_path, "a test's folder", "") as holder:
        child = os.fork()
        if child == 0:   # the worker: alive until told, then gone without cleanup
            os.write(started_write, b"x")   # (running: the fork hooks have run)
            os.read(wake_read, 1)
            os._exit(0)
        os.read(started_read, 1)
        with pytest.raises(FolderInUse):   # the child's closing its copy left the parent's lock held
            with FolderLock(tmp_path, "a test's folder", ""):
                pass
        assert holder._fd is not None
    try:
        with FolderLock(tmp_path, "a test's folder", ""):   # released with the parent's descriptor
            pass
    finally:
        os.write(wake_write, b"x")
        os.waitpid(child, 0)
        for fd in (wake_read, wake_write, started_read, started_write):
            os.close(fd)


def test_a_folder_lock_waits_for_its_holder_and_is_skipped_where_the_filesystem_has_none(tmp_path, monkeypatch,
                                                                                          caplog):
    holder = FolderLock(tmp_path, "the results", "", name="results.lock").__enter__()
    threading.Timer(0.3, holder.__exit__, args=(None, None, None)).start()
    with FolderLock(tmp_path, "the results", "", name="results.lock", wait_s=30):   # taken once released
        pass
    with FolderLock(tmp_path, "the results", "Try later.", name="results.lock"):
        with pytest.raises(FolderInUse, match=r"is in use by process .*: the results is written by one process at "
                                              r"a time. Try later."):
            with FolderLock(tmp_path, "the results", "Try later.", name="results.lock", wait_s=0.2):
                pass
        with FolderLock(tmp_path, "other", "", name="other.lock"):   # another name is another lock
            pass

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(folder_lock.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="src.utils.folder_lock"):
        with FolderLock(tmp_path, "the results", "", name="results.lock"):
            pass
    assert "is not locked: its filesystem refuses locks (No locks available)" in caplog.text


def test_every_rank_draws_its_stream_from_rank_zeros_so_a_recorded_seed_repeats_them_all():
    """Under srun or torchrun each rank seeds itself, and with seed=null each draws its own seed;
    only rank 0's is recorded. RankSeed gives rank r > 0 a stream drawn from rank 0's (broadcast),
    whatever the rank's own seed was, and leaves rank 0's stream untouched."""
    from types import SimpleNamespace

    from src.callbacks.rank_seed import RankSeed
    torch.manual_seed(7)   # rank 0's stream
    zero_state = torch.random.get_rng_state()
    sent = []

    def rank_zero_broadcast(value):
        sent.append(value)
        return value
    RankSeed().on_train_start(SimpleNamespace(world_size=2, global_rank=0,
                                              strategy=SimpleNamespace(broadcast=rank_zero_broadcast)), None)
    assert torch.equal(torch.random.get_rng_state(), zero_state) and len(sent) == 1
    outcomes = []
    for own_seed in (12345, 999):   # two starts of rank 1 that seeded themselves apart
        torch.manual_seed(own_seed)
        RankSeed().on_train_start(SimpleNamespace(world_size=2, global_rank=1,
                                                  strategy=SimpleNamespace(broadcast=lambda value: sent[0])), None)
        outcomes.append(torch.rand(3))
    assert torch.equal(outcomes[0], outcomes[1])
    torch.manual_seed(7)
    assert not torch.equal(torch.rand(3), outcomes[0])   # rank 1's own stream, not rank 0's


def test_the_first_process_of_another_node_is_not_rank_zero(monkeypatch):
    """Under Lightning's own launcher on several nodes, node 1's first process read rank 0 until
    its Trainer existed, and took the shared run folder's claim (refusing node 0's)."""
    from src.utils.hydra_runtime import is_rank_zero
    for variable in ("NODE_RANK", "GROUP_RANK"):   # (a shell inside a multi-node allocation)
        monkeypatch.delenv(variable, raising=False)
    assert is_rank_zero()
    for variable in ("NODE_RANK", "GROUP_RANK"):   # Lightning's, torchrun's
        with monkeypatch.context() as patch:
            patch.setenv(variable, "1")
            assert not is_rank_zero()
            patch.setenv(variable, "0")
            assert is_rank_zero()


def test_ranks_other_than_zero_log_warnings_only_during_a_run(monkeypatch):
    """Eight ranks each said the same setup lines (parameter counts, the seed, the folders) into
    the run's log; the other ranks keep their warnings and errors."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    from src.utils.hydra_runtime import other_ranks_log_warnings_only

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())
    kept, logger = Kept(), logging.getLogger("tests.ranks")
    logging.getLogger().addHandler(kept)
    logger.setLevel(logging.INFO)
    try:
        monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
        with other_ranks_log_warnings_only():
            logger.info("G_A: 7,837,699 parameters")
            logger.warning("a rank's own warning")
        logger.info("after the run")
        monkeypatch.setattr(rank_zero_only, "rank", 0)
        with other_ranks_log_warnings_only():
            logger.info("rank zero's line")
    finally:
        logging.getLogger().removeHandler(kept)
    assert kept.messages == ["a rank's own warning", "after the run", "rank zero's line"]


def test_the_code_record_reads_a_non_ascii_change_whatever_the_systems_code_page(tmp_path):
    """git writes UTF-8; read in the system's code page (Windows', or here an ASCII locale), an
    uncommitted change holding a non-ASCII character stopped the run at its start."""
    import subprocess
    import sys
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    code = repo / "src" / "model.py"
    code.write_text("x = 1\n", encoding="utf-8")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false",
           "-c", "core.hooksPath=/dev/null"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    code.write_text("x = 1  # ρ données\n", encoding="utf-8")
    script = ("import sys; from pathlib import Path; from src.utils.code_version import uncommitted_changes; "
              "diff, _ = uncommitted_changes(Path(sys.argv[1])); "
              "sys.stdout.buffer.write(diff.encode('utf-8'))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", script, str(repo)], capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert "+x = 1  # ρ données" in result.stdout.decode("utf-8")


def test_the_code_record_keeps_new_code_files_so_the_patch_gives_the_code_the_run_ran(tmp_path):
    """A researcher's new model module and its config, not yet added to git, were only named in
    code.patch: the run could not be repeated from its record."""
    import subprocess

    from src.utils.code_version import MAX_KEPT_UNTRACKED_BYTES, uncommitted_changes
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "model.py").write_text("x = 1\n")
    git = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(repo), *git, *args], check=True)
    (repo / "src" / "model.py").write_text("x = 2\n")
    (repo / "src" / "my_gan.py").write_text("class MyGAN:\n    pass\n")
    (repo / "conf" / "model").mkdir(parents=True)
    (repo / "conf" / "model" / "my_gan.yaml").write_text("model_name: my_gan\n")
    (repo / "src" / "weights.bin").write_bytes(bytes(range(256)))
    (repo / "src" / "big.py").write_text("#" * (MAX_KEPT_UNTRACKED_BYTES + 1))
    (repo / "notes.txt").write_text("not code")
    diff, not_kept = uncommitted_changes(repo)
    assert sorted(not_kept) == ["src/big.py", "src/weights.bin"]
    assert "notes.txt" not in diff
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    (tmp_path / "code.patch").write_text(diff)
    subprocess.run(["git", "-C", str(clone), "apply", str(tmp_path / "code.patch")], check=True)
    for name in ("src/model.py", "src/my_gan.py", "conf/model/my_gan.yaml"):
        assert (clone / name).read_text() == (repo / name).read_text()
