"""The image-size check before the first training step (src/models/size_check.py), and the
smoke config's image size for datasets of files."""
import hydra
import pytest
import torch

from src.models.size_check import check_image_size
from src.utils.run import run_training
from tests.conftest import DATA_OF, MODELS


def build(train_cfg, model_name: str, *overrides: str):
    cfg = train_cfg(f"model={model_name}", f"data={DATA_OF[model_name]}", *overrides)
    return cfg, hydra.utils.instantiate(cfg.model, _recursive_=False)


def images(side: int) -> torch.Tensor:
    return torch.zeros(1, 3, side, side)


@pytest.mark.parametrize("model_name", MODELS)
def test_sizes_the_networks_take_pass_and_leave_the_model_as_it_was(train_cfg, model_name):
    cfg, model = build(train_cfg, model_name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = {(name, key): value for name, module in model.named_modules()
             for key, value in vars(module).items() if isinstance(value, torch.Tensor)}
    check_image_size(model, images(cfg.data.size))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    # torch's spectral norm keeps the normalised weight as a plain attribute (U-GAT-IT, NICE-GAN)
    assert all(vars(dict(model.named_modules())[name])[key] is value for (name, key), value in plain.items())


@pytest.mark.parametrize("model_name, side, failing, nearest, networks", [
    ("pix2pix", 40, "AtoB translation fails", "32x32 or 64x64",    # U-Net of 5 downs: multiples of 32
     "model.generator.*, model.discriminator.*"),
    ("cyclegan", 30, "AtoB translation returns 32x32", "28x28 or 32x32", "model.generator.*, model.discriminator.*"),
    # its discriminators by their own nodes (there is no model.discriminator)
    ("ugatit", 16, "discriminator UGATITDiscriminator fails", "24x24",
     "model.generator.*, model.global_discriminator.*, model.local_discriminator.*"),
    ("nicegan", 32, "discriminator NICEGANDiscriminator fails", "48x48", "model.generator.*, model.discriminator.*"),
])
def test_a_size_the_networks_cannot_take_is_refused_with_the_nearest_sizes_and_the_settings(
        train_cfg, model_name, side, failing, nearest, networks):
    _, model = build(train_cfg, model_name)
    with pytest.raises(ValueError) as error:
        check_image_size(model, images(side))
    message = str(error.value)
    assert f"cannot train on {side}x{side} px images" in message and failing in message
    assert f"accept: {nearest}." in message and "data.crop_size" in message and "data.size" in message
    assert f"make the networks shallower or deeper ({networks})." in message


def test_training_stops_at_the_first_batch_with_the_size_error(train_cfg):
    cfg = train_cfg("model=pix2pix", "data=shapes_paired", "data.size=40", "max_iters=1")
    with pytest.raises(ValueError, match=r"Pix2Pix cannot train on 40x40 px images .* 32x32 or 64x64"):
        run_training(cfg)


@pytest.mark.parametrize("model_name, setting, refused", [
    ("cyclegan", "input_nc", "3-channel A images, and CycleGAN's AtoB translation reads 1"),
    # A and B batches of one shape: B's channels were taken as checked with A's
    ("cyclegan", "output_nc", "3-channel B images, and CycleGAN's AtoB translation writes 1"),
    # pix2pix's B is read by the L1 loss alone, which broadcast one channel over three
    ("pix2pix", "output_nc", "3-channel B images, and Pix2Pix's AtoB translation writes 1"),
])
def test_networks_built_for_other_channels_than_the_data_stop_at_the_first_batch(train_cfg, model_name, setting,
                                                                                  refused):
    """model.generator.input_nc / output_nc set in place of data.input_nc / output_nc: torch's
    error in a convolution named no setting."""
    identity = ["loss.weights.identity=0"] if model_name == "cyclegan" else []   # its channels would differ
    cfg = train_cfg(f"model={model_name}", f"data={DATA_OF[model_name]}", f"model.generator.{setting}=1", *identity,
                    "max_iters=1")
    with pytest.raises(ValueError, match=rf"The data gives {refused}: the networks' input_nc/output_nc "
                                         r"\(model.generator...\) must be data.input_nc/output_nc"):
        run_training(cfg)


def test_the_smoke_config_sizes_the_embedded_datasets_only(train_cfg):
    # NICE-GAN's smoke networks need more than the embedded dataset's 32 px; a dataset of files
    # has no `size` key (its module would refuse it) and keeps its own crop size.
    assert train_cfg("model=nicegan", "data=shapes").data.size == 64
    assert train_cfg("model=nicegan", "data=shapes_paired").data.size == 64
    # U-GAT-IT's smoke networks keep the data's 32 px (its paper-size networks get 128)
    assert train_cfg("model=ugatit", "data=shapes").data.size == train_cfg("model=ugatit", "data=shapes_paired").data.size == 32
    files = train_cfg("model=nicegan", "data=cat2dog").data
    assert "size" not in files and files.crop_size == 256
    assert train_cfg("model=nicegan", "data.size=128").data.crop_size == 128   # the command line still wins


def test_the_size_check_passes_synchronised_batch_norm_under_a_process_group(train_cfg, tmp_path):
    """trainer.sync_batchnorm=true (conf/trainer/ddp.yaml): Lightning makes the batch norms
    SyncBatchNorm, which refuses a tensor off the GPU in training mode once a process group
    exists, so the meta-device size check failed every size and stopped the run. It checks them
    in eval mode, leaving them in training mode after."""
    import torch.distributed as dist
    cfg, model = build(train_cfg, "pix2pix")
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    synced = [m for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert synced
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model.train()
        check_image_size(model, images(cfg.data.size))
        assert all(m.training for m in synced)
    finally:
        dist.destroy_process_group()
