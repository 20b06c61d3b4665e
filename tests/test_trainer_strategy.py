"""The DDP strategy chosen for runs on several devices (src/utils/ddp_strategy.py): plain DDP
fails at a GAN's second backward, so `auto` becomes DDP with the unused-parameter search."""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from src.utils.ddp_strategy import choose_strategy, process_count  # noqa: E402
from src.utils.run import build_trainer_kwargs  # noqa: E402


def chosen(**trainer) -> str:
    choose_strategy(trainer)
    return trainer.get("strategy", "auto")


def test_several_devices_train_under_ddp_with_the_unused_parameter_search(train_cfg):
    """`trainer.devices=2` alone (the default trainer's `auto` strategy) gets the strategy
    trainer=ddp sets; Lightning's own pick, plain ddp, fails after the ranks have started."""
    cfg = train_cfg("trainer.devices=2")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert build_trainer_kwargs(cfg, model)["strategy"] == "ddp_find_unused_parameters_true"
    assert build_trainer_kwargs(train_cfg(), model)["strategy"] == "auto"   # one device: no DDP
    assert chosen(accelerator="cpu", devices=1, num_nodes=2) == "ddp_find_unused_parameters_true"
    assert chosen(accelerator="cpu", devices="3", num_nodes=1) == "ddp_find_unused_parameters_true"


def test_iterations_on_several_processes_say_the_images_they_train_on(train_cfg, caplog):
    """data.batch_size is per process: U-GAT-IT's 1M iterations on 8 GPUs are 8M images."""
    model = hydra.utils.instantiate(train_cfg().model, _recursive_=False)
    with caplog.at_level("WARNING", logger="src.utils.run"):
        build_trainer_kwargs(train_cfg("trainer=ddp_sim", "max_iters=1001"), model)
    assert ("max_iters=1001 on 2 processes: every iteration trains data.batch_size=1 images on each, 2 times an "
            "iteration on one. For the images of 1001 iterations on one device, set max_iters=501") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="src.utils.run"):
        build_trainer_kwargs(train_cfg("max_iters=1001"), model)
    assert "processes" not in caplog.text


@pytest.mark.parametrize("overrides,benchmark", [([], True), (["trainer.deterministic=true"], False),
                                                 (["trainer.benchmark=false"], False)])
def test_cudnn_times_its_algorithms_unless_deterministic_or_turned_off(train_cfg, overrides, benchmark):
    """Lightning leaves torch's default (off) for `benchmark: null`, which the GPU benchmark's
    numbers do not assume; deterministic runs keep it off (it would override them)."""
    cfg = train_cfg(*overrides)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert build_trainer_kwargs(cfg, model)["benchmark"] is benchmark


def test_a_strategy_the_config_names_is_kept(train_cfg):
    cfg = train_cfg("trainer=ddp_sim")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert build_trainer_kwargs(cfg, model)["strategy"] == "ddp_find_unused_parameters_true"
    assert chosen(accelerator="cpu", devices=2, strategy="ddp_spawn_find_unused_parameters_true") == \
        "ddp_spawn_find_unused_parameters_true"


@pytest.mark.parametrize("strategy, fix", [
    ("ddp", "ddp_find_unused_parameters_true"),
    ("ddp_spawn", "ddp_spawn_find_unused_parameters_true"),
    ("ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true"),
    ("ddp_fork_find_unused_parameters_false", "ddp_fork_find_unused_parameters_true"),
])
def test_plain_ddp_is_refused_naming_the_strategy_that_works(train_cfg, strategy, fix):
    cfg = train_cfg(f"trainer.strategy={strategy}", "trainer.devices=2")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match=f"trainer.strategy={strategy} fails at a GAN's second backward.*"
                                         f"Use trainer.strategy={fix} "):
        build_trainer_kwargs(cfg, model)


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp_cpu_offload", "deepspeed_stage_2"])
def test_sharded_strategies_are_refused_naming_ddp(train_cfg, strategy):
    cfg = train_cfg(f"trainer.strategy={strategy}")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match=f"trainer.strategy={strategy} is not supported: .* Use "
                                         f"trainer.strategy=ddp_find_unused_parameters_true in its place"):
        build_trainer_kwargs(cfg, model)
    cfg.trainer.strategy = "ddp_find_unused_parameters_true"   # the fix, as named
    assert build_trainer_kwargs(cfg, model)["strategy"] == "ddp_find_unused_parameters_true"


def test_the_process_count_follows_lightnings_reading_of_the_devices():
    assert process_count({"accelerator": "cpu", "devices": 2, "num_nodes": 3}) == 6
    assert process_count({"accelerator": "cpu", "devices": "auto"}) == 1
    assert process_count({"accelerator": "tpu", "devices": 8}) is None   # not ours to count
    if not torch.cuda.is_available():
        # GPUs this machine lacks: left to Lightning, whose error names them
        assert process_count({"accelerator": "gpu", "devices": 2}) is None
        assert process_count({"accelerator": "auto", "devices": 2}) == 2   # auto is the CPU here


@pytest.mark.parametrize("overrides,max_iters,max_kimg,message", [
    (["model=ugatit", "trainer.max_epochs=10"], 1_000_000, None,
     r"trainer.max_epochs=10: this run's length is max_iters=1000000, which replaces "
     r"trainer.max_epochs.* pass max_iters=null to train by trainer.max_epochs"),
    (["trainer.max_epochs=50"], None, 25000, r"trainer.max_epochs=50: this run's length is max_kimg=25000"),
    # both set (a ProGAN run cut short by max_iters): max_iters=null alone leaves max_kimg's length
    (["model=progan", "trainer.max_epochs=5"], 1000, 19000,
     r"pass max_iters=null max_kimg=null to train by trainer.max_epochs"),
])
def test_a_length_the_run_would_replace_is_refused(overrides, max_iters, max_kimg, message):
    """On the command line of a run whose config sets max_iters or max_kimg (U-GAT-IT's 1M
    iterations, StyleGAN's 25000 kimg), trainer.max_epochs did nothing."""
    from src.utils.unread_overrides import refuse_overridden_length

    with pytest.raises(ValueError, match=message):
        refuse_overridden_length(overrides, max_iters, max_kimg)
    refuse_overridden_length(overrides, None, None)   # a run measured in epochs takes it
    # trainer.max_steps is refused whatever the length (refuse_loop_settings), not with advice to
    # pass max_iters=null, which would only lead there
    refuse_overridden_length(["+trainer.max_steps=50"], 1000, None)
    refuse_overridden_length(["trainer.max_epochs=10", "max_iters=null"], None, None)


@pytest.mark.parametrize("overrides,message", [
    # no validation loop: these would do nothing (or fail in Lightning over a loop that never runs)
    (["+trainer.val_check_interval=0.5"], "trainer.val_check_interval=0.5: no validation loop runs here"),
    (["+trainer.check_val_every_n_epoch=null"], "trainer.check_val_every_n_epoch=None: no validation loop"),
    (["trainer.limit_val_batches=1.0"], "callbacks.fid_kid.every_n_iters"),
    (["trainer.num_sanity_val_steps=2"], "Remove trainer.num_sanity_val_steps"),
    (["+trainer.fast_dev_run=true"], "Use debug=smoke"),
    # optimizer steps, not iterations: 2 per CycleGAN iteration
    (["max_iters=null", "+trainer.max_steps=10"], "trainer.max_steps=10 counts optimizer steps"),
    (["max_iters=null", "trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
    (["+trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 trains nothing"),
    # past max_iters/max_kimg: every iteration would be taken for the run's last
    (["+trainer.min_steps=100"], "trainer.min_steps=100: Lightning would train on past the run's end"),
    (["+trainer.min_epochs=3"], "trainer.min_epochs=3: Lightning would train on past the run's end"),
])
def test_loop_settings_that_would_not_do_what_they_say_are_refused(train_cfg, overrides, message):
    cfg = train_cfg(*overrides)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build_trainer_kwargs(cfg, model)


def test_a_run_without_an_end_says_so_at_start(train_cfg, caplog):
    """trainer.max_epochs=-1 without max_iters or max_kimg trains until stopped, CycleGAN's
    decay at rate 0 after its 200 epochs."""
    import logging
    cfg = train_cfg("max_iters=null", "trainer.max_epochs=-1")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with caplog.at_level(logging.WARNING):
        build_trainer_kwargs(cfg, model)
    assert "trainer.max_epochs=-1 with neither max_iters nor max_kimg: the run has no end" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_trainer_kwargs(train_cfg("max_iters=null", "trainer.max_epochs=3"), model)
        build_trainer_kwargs(train_cfg("max_iters=5", "trainer.max_epochs=-1"), model)
    assert "has no end" not in caplog.text


def test_the_default_loop_settings_pass(train_cfg):
    cfg = train_cfg("max_iters=null", "trainer.max_epochs=3")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    kwargs = build_trainer_kwargs(cfg, model)
    assert kwargs["max_epochs"] == 3 and kwargs["limit_val_batches"] == 0 and kwargs.get("max_steps", -1) == -1
