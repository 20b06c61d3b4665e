"""Training items in an order, and with augmentations, set by (seed, epoch) alone."""
import logging
import random
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch

from src.data.epoch_order import EpochOrderSampler, SeededItems, items_done_when_resharded
from src.data.unpaired import UnpairedDataModule
from src.utils.run import run_training
from conftest import NO_EVALUATION
from tests.test_data import make_unpaired, module
from tests.test_models import fit_briefly


class RandomItems(torch.utils.data.Dataset):
    """Item i: (i, a draw from torch's global RNG), like an item with a random augmentation."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int):
        return index, float(torch.rand(()))


def epoch(sampler: EpochOrderSampler, number: int) -> list[tuple[int, int]]:
    sampler.set_epoch(number)
    return list(sampler)


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    dataset = SeededItems(RandomItems())
    first = epoch(EpochOrderSampler(dataset, seed=3), 0)
    assert sorted(index for index, _ in first) == list(range(10))
    assert epoch(EpochOrderSampler(dataset, seed=3), 0) == first
    assert epoch(EpochOrderSampler(dataset, seed=3), 1) != first
    assert epoch(EpochOrderSampler(dataset, seed=4), 0) != first


def test_seeded_work_leaves_the_gpus_random_streams_alone(monkeypatch):
    """An item's seed (and the classifier score's fixed seed) seed the CPU generator only:
    torch.manual_seed also reseeds every GPU's generator, which fork_rng([]) does not restore,
    so on a GPU each item loaded in the main process set training's CUDA stream to its seed
    (latents, penalties and dropout drawn on the GPU). Seen here as calls to the GPUs' seeding."""
    from src.metrics.image_classifier import train_image_classifier
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    dataset = SeededItems(RandomItems())
    assert dataset[(3, 7)] == dataset[(3, 7)]   # the item's draws follow its seed
    train_image_classifier(torch.rand(8, 3, 8, 8) * 2 - 1, torch.arange(8) % 2, num_classes=2, epochs=1)
    assert reseeded == []


def test_ranks_split_the_one_epoch_list_without_overlap():
    dataset = SeededItems(RandomItems())
    whole = epoch(EpochOrderSampler(dataset, seed=3), 2)
    ranks = [epoch(EpochOrderSampler(dataset, seed=3, num_replicas=2, rank=r), 2) for r in (0, 1)]
    assert ranks[0] == whole[0::2] and ranks[1] == whole[1::2]
    three = [EpochOrderSampler(dataset, seed=3, num_replicas=3, rank=r) for r in (0, 1, 2)]
    assert all(len(s) == 4 for s in three)  # 10 items padded to 12, as DistributedSampler pads
    assert {i for s in three for i, _ in epoch(s, 2)} == set(range(10))


def test_resume_starts_that_epoch_after_the_items_done_and_only_that_epoch():
    dataset = SeededItems(RandomItems())
    sampler = EpochOrderSampler(dataset, seed=3, num_replicas=2, rank=1)
    full = {n: epoch(sampler, n) for n in (4, 5)}
    sampler.resume(epoch=4, items_done=2)
    assert epoch(sampler, 4) == full[4][2:]
    assert epoch(sampler, 5) == full[5]
    assert len(sampler) == 5  # Lightning counts the epoch's batches, the done ones included


@pytest.mark.parametrize("saved_world,world,items_done,batch_size", [(1, 2, 4, 1), (2, 1, 2, 1), (2, 3, 3, 1),
                                                                      (3, 2, 2, 2), (4, 2, 1, 1)])
def test_an_epoch_resumed_on_another_number_of_ranks_goes_on_after_all_ranks_items(saved_world, world, items_done,
                                                                                    batch_size):
    """Saved on `saved_world` ranks that had each trained `items_done`, resumed on `world`: the
    new ranks together train the rest of the one epoch list, each the same number of whole
    batches, repeating fewer than world x batch_size items and leaving none out."""
    dataset = SeededItems(RandomItems())
    whole = epoch(EpochOrderSampler(dataset, seed=3), 2)
    trained = whole[: items_done * saved_world]
    per_rank = items_done_when_resharded(items_done, saved_world, world, batch_size)
    assert per_rank % batch_size == 0
    rest = []
    for rank in range(world):
        sampler = EpochOrderSampler(dataset, seed=3, num_replicas=world, rank=rank)
        sampler.resume(epoch=2, items_done=per_rank)
        rest += epoch(sampler, 2)
    assert set(trained) | set(rest) == set(whole)
    assert 0 <= len(trained) + len(rest) - sampler.total_size < world * batch_size


def test_an_item_draws_from_its_own_seed_and_leaves_the_callers_rng_alone():
    dataset = SeededItems(RandomItems())
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = dataset[(7, 123)]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)
    assert dataset[(7, 123)] == first
    assert dataset[(7, 124)] != first


class EveryLibrarysDraws(torch.utils.data.Dataset):
    """Item i: a draw from each global RNG an added transform may use: torch's, numpy's, python's."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int):
        return index, float(torch.rand(())), float(np.random.rand()), random.random()


def test_numpy_and_python_draws_of_an_item_are_its_seeds_too_and_the_callers_are_kept():
    """Only torch's generator was seeded: a dataset or transform drawing from numpy or python
    differed with data.num_workers (each worker's stream) and between a run and its resume; a
    plain index (overfit_batches) drew from the training's own streams."""
    dataset = SeededItems(EveryLibrarysDraws())
    np.random.seed(0)
    random.seed(0)
    states = np.random.get_state()[1].copy(), random.getstate()
    first = dataset[(7, 123)]
    assert np.array_equal(np.random.get_state()[1], states[0]) and random.getstate() == states[1]
    np.random.seed(99)
    random.seed(99)
    assert dataset[(7, 123)] == first and dataset[(7, 124)][2:] != first[2:]
    plain = dataset[3]
    torch.manual_seed(5)
    np.random.seed(5)
    assert dataset[3] == plain and plain != dataset[4]


def test_every_librarys_draws_of_an_item_are_the_same_in_a_loader_worker():
    """Workers seed each item's streams without saving the ones before: the items must still
    be the main process's, whichever worker loads them and in whatever order."""
    dataset = SeededItems(EveryLibrarysDraws())
    keys = [(i, 1000 + i) for i in (3, 1, 4, 1, 5, 9)]
    in_process = [dataset[key] for key in keys]
    loader = torch.utils.data.DataLoader(dataset, sampler=keys, batch_size=None, num_workers=2)
    assert [tuple(item) for item in loader] == in_process
    assert len(set(in_process)) == 5   # the repeated key gives the same item; the others differ


def batches(dm, num_workers: int) -> list:
    dm.num_workers = num_workers
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    return [(b["A_path"], b["B_path"], b["A"], b["B"]) for b in loader]


def test_items_and_augmentations_do_not_depend_on_the_workers(tmp_path):
    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d", n_a=4, n_b=6), batch_size=2)
    dm.setup("fit")
    torch.manual_seed(5)
    in_process = batches(dm, 0)
    torch.manual_seed(5)
    with_workers = batches(dm, 2)
    assert len(in_process) == 3
    assert_same_batches(with_workers, in_process)


def test_iterating_the_training_loader_draws_nothing_from_the_global_rng(tmp_path):
    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d"), batch_size=2)
    dm.setup("fit")
    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert list(dm.train_dataloader())
    assert torch.equal(torch.get_rng_state(), state)


def test_lightning_overfit_batches_swaps_in_a_sequential_sampler_and_still_trains(train_cfg):
    """`trainer.overfit_batches` replaces the sampler with a sequential one: items then come by
    plain index, and the run trains and checkpoints as usual."""
    cfg = train_cfg("+trainer.overfit_batches=2", "max_iters=2", *NO_EVALUATION)
    run_training(cfg)
    checkpoint = torch.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 * hydra.utils.get_class(cfg.model._target_).optimizer_steps_per_iter


def images_trained_before_and_after_a_resume(train_cfg, tmp_path, common, resumed_overrides,
                                             first_iterations: int = 2) -> list[list]:
    """Train `first_iterations`, resume from that run's last.ckpt with `resumed_overrides`: the
    (A path, B path) items each run trained on, as the rank probe callback records them."""
    probe = "+callbacks.rank_probe._target_=tests.scripts.ddp_probe.RankProbe"
    first = train_cfg(*common, probe, f"max_iters={first_iterations}", *NO_EVALUATION)
    first.paths.output_dir = str(tmp_path / "first")
    run_training(first)
    resumed = train_cfg(*common, probe, *resumed_overrides, f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt",
                        *NO_EVALUATION)
    run_training(resumed)
    return [torch.load(Path(run, "rank_probe_0.pt"), weights_only=False)["paths"]
            for run in (first.paths.output_dir, resumed.paths.output_dir)]


def test_an_epoch_resumed_at_another_batch_size_trains_the_rest_of_its_list(train_cfg, tmp_path, caplog):
    """2 of 8 items trained at batch 1, resumed at batch 2 for 3 iterations: the other 6, none
    twice; Lightning's count of the epoch's batches follows, so the epoch ends with its list."""
    with caplog.at_level(logging.INFO):
        trained = images_trained_before_and_after_a_resume(
            train_cfg, tmp_path, ("model=cyclegan", "data.max_dataset_size=8", "seed=3"),
            ("max_iters=5", "data.batch_size=2"))
    assert "Resumed on 1 device(s) at batch size 2 a run saved on 1 at batch size 1" in caplog.text
    assert [len(paths) for paths in trained] == [2, 6]
    assert len({a for a, _ in trained[0] + trained[1]}) == 8   # domain A's images; B is a random partner


def test_a_run_saved_at_an_epochs_end_and_resumed_at_another_batch_size_trains_the_next_epoch_whole(
        train_cfg, tmp_path, caplog):
    """3 items at batch 1, saved at the epoch's last batch, resumed at batch 2: the next epoch
    starts at its first batch. Rounded down to whole batches, the 3 items done counted as one
    batch of two, and Lightning, which had ended the epoch, began the next one at its second
    batch: most of that epoch's items were never trained."""
    with caplog.at_level(logging.INFO):
        trained = images_trained_before_and_after_a_resume(
            train_cfg, tmp_path, ("model=cyclegan", "data.max_dataset_size=3", "seed=3"),
            ("max_iters=5", "data.batch_size=2"), first_iterations=3)
    assert "a run saved on 1 at batch size 1 at the end of epoch 0: the next epoch starts whole" in caplog.text
    assert [len(paths) for paths in trained] == [3, 3]
    assert len({a for a, _ in trained[1]}) == 3   # one whole epoch: every image of A once


def test_an_epoch_resumed_over_a_changed_training_set_says_its_order_is_new(train_cfg, tmp_path, caplog):
    """2 of the smoke config's 16 items trained, resumed over 6 (data.max_dataset_size changed):
    the saved place in the epoch no longer names the same items, and the resumed run says so."""
    with caplog.at_level(logging.WARNING):
        images_trained_before_and_after_a_resume(train_cfg, tmp_path, ("model=cyclegan", "seed=3"),
                                                 ("max_iters=3", "data.max_dataset_size=6"))
    assert "The training set had 16 items when the checkpoint was saved and has 6 now" in caplog.text
    assert "epoch 0 resumes in a new order after 2 items per device" in caplog.text


HALF_BY_ITERATIONS = ("model.lr_schedule.policy=linear",   # DCGAN counts iterations already
                      "+model.lr_schedule.constant=half", "+model.lr_schedule.decay=half")


@pytest.mark.parametrize("schedule", ((), HALF_BY_ITERATIONS), ids=("constant", "half_by_iterations"))
def test_a_run_measured_in_epochs_resumes_inside_its_epoch(train_cfg, tmp_path, schedule):
    """DCGAN's schedule counts iterations while the run is measured in epochs: nothing may
    build the training loader before a resume restores its place (Lightning keeps the first
    loader it builds), so the resumed run trains the other 14 of the epoch's 16 images. With
    'half' the schedule's length is the epoch's batches, which the loader says."""
    trained = images_trained_before_and_after_a_resume(
        train_cfg, tmp_path, ("model=dcgan", "data.max_dataset_size=8", "seed=3", "data.batch_size=1", *schedule),
        ("max_iters=null", "trainer.max_epochs=1"))
    images = [path for paths in trained for path, _ in paths]
    assert len(images) == len(set(images)) == 16


def test_half_of_a_run_measured_in_epochs_is_filled_in_once_its_loader_exists(train_cfg):
    """An iteration schedule of 'half' in a run of 2 epochs: the epochs' batches, read from the
    loader at the start of training, split in two; the rate reaches 0 at the run's end."""
    model = fit_briefly(train_cfg("model=dcgan", "data.max_dataset_size=4", "data.batch_size=1", "max_iters=null",
                                  "trainer.max_epochs=2", *HALF_BY_ITERATIONS, *NO_EVALUATION))
    factors = [f for scheduler in model.lr_schedulers() for f in scheduler.lr_lambdas]
    epoch = model.trainer.num_training_batches
    assert epoch >= 2 and len(factors) == 2
    assert [(f.constant, f.decay) for f in factors] == [(epoch, epoch)] * 2
    assert all(group["lr"] == 0.0 for opt in model.optimizers() for group in opt.param_groups)


def test_a_loader_built_again_each_epoch_resumes_the_same_run(train_cfg, tmp_path):
    """trainer.reload_dataloaders_every_n_epochs=1 builds the training loader at every epoch,
    each with an order seed drawn from the global RNG (which pix2pix's dropout moves): a run
    resumed from an epoch's end still trains the same items as the straight run."""
    from conftest import assert_resume_continues_the_run
    assert_resume_continues_the_run(
        train_cfg, tmp_path, ["model=pix2pix", "data=shapes_paired", "data.max_dataset_size=4", "data.batch_size=2",
                              "seed=7", "+trainer.reload_dataloaders_every_n_epochs=1", *NO_EVALUATION],
        iterations_per_epoch=2)


def test_the_training_order_comes_from_the_run_seed_alone(tmp_path):
    """Set by the run's seed, not read from torch's stream after the model is built: two
    runs of one seed whose models differ (an ablation's width) trained on other epoch lists,
    crops and partners, and so did one GPU and two (Lightning reseeds each DDP process)."""
    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d", n_a=4, n_b=6), batch_size=2)
    dm.setup("fit")
    dm.run_seed = 7
    torch.manual_seed(1)
    first = batches(dm, 0)
    torch.manual_seed(2)   # as if another model had drawn its weights before
    assert_same_batches(batches(dm, 0), first)
    dm.run_seed = 8
    assert [paths for paths, *_ in batches(dm, 0)] != [paths for paths, *_ in first]


def test_every_rank_takes_rank_zeros_training_order_whatever_its_own_run_seed(tmp_path):
    """Under srun or torchrun with seed=null each rank draws its own run seed: ranks of
    different epoch lists would take overlapping shares and miss items."""
    from types import SimpleNamespace

    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d", n_a=4, n_b=6), batch_size=2)
    dm.setup("fit")
    dm.run_seed = 99   # this rank's own draw
    broadcast = []
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1,
                                 strategy=SimpleNamespace(broadcast=lambda value: broadcast.append(value) or 1234))
    assert dm.train_dataloader().sampler.seed == 1234 and len(broadcast) == 1


def assert_same_batches(these, those):
    assert len(these) == len(those)
    for (a_paths, b_paths, a, b), (a_paths2, b_paths2, a2, b2) in zip(these, those):
        assert a_paths == a_paths2 and b_paths == b_paths2
        assert torch.equal(a, a2) and torch.equal(b, b2)


def test_runs_of_one_seed_with_other_models_train_on_the_same_order(train_cfg, tmp_path):
    seeds = []
    for width in (4, 8):
        cfg = train_cfg("model=cyclegan", "max_iters=1", f"model.generator.ngf={width}", *NO_EVALUATION)
        cfg.paths.output_dir = str(tmp_path / f"ngf{width}")
        run_training(cfg)
        checkpoint = torch.load(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"), weights_only=True)
        seeds.append(next(state["order_seed"] for state in checkpoint.values()
                          if isinstance(state, dict) and "order_seed" in state))
    assert seeds[0] == seeds[1]
