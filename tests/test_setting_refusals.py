"""A setting out of its range is refused by the class that reads it, and the refusal names the
key a user sets: the key in the message must be one the composed config holds (a message naming
`model.pool_size` where the setting lives elsewhere would send the user looking in vain)."""
import re

import hydra
import pytest
from omegaconf import OmegaConf

#: (overrides, the config node built, the message, the key it names)
REFUSED = [
    (["model=cyclegan", "model.pool_size=-1"], "model", r"model.pool_size must be >= 0", "model.pool_size"),
    (["model=progan", "model.drift=-1"], "model", r"model.drift=-1 must be >= 0", "model.drift"),
    (["model=cyclegan", "data.direction=XtoY"], "data", r"data.direction='XtoY' must be one of AtoB, BtoA",
     "data.direction"),
    (["model=pix2pix", "data=shapes_paired", "data.layout=sideways"], "data", r"data.layout='sideways' must be one of",
     "data.layout"),
    (["model=cyclegan", "data.preprocess=scale_width", "data.load_size=2", "data.crop_size=2"], "data",
     r"data.load_size=2 must be at least \d+ with data.preprocess=scale_width", "data.load_size"),
    (["model=pix2pix", "data=shapes_paired", "model.generator.num_downs=3"], "model",
     r"model.generator.num_downs=3 must be an integer >= 5 .*or auto", "model.generator.num_downs"),
    (["model=ugatit", "model.generator.cam_classifier=both"], "model",
     r"cam_classifier='both' \(model.generator.cam_classifier, and each discriminator's\) is not a CAM classifier: "
     r"choose one of \('separate', 'shared', 'joint'\)", "model.generator.cam_classifier"),
    (["model=cyclegan", "data.input_nc=1"], "model",
     r"loss.weights.identity > 0 needs data.input_nc == data.output_nc; set it to 0", "loss.weights.identity"),
    (["model=cyclegan", "model.generator.norm=group"], "model",
     r"Unknown norm 'group' \(config key model.\*.norm\); choose one of", "model.generator.norm"),
    (["model=infogan", "model.generator.norm=instance"], "model",
     r"norm 'instance' \(config key model.\*.norm\) has no form for a fully connected layer's output",
     "model.generator.norm"),
    (["model=cyclegan", "callbacks.ema.decay=1.0"], "callbacks.ema", r"callbacks.ema.decay=1.0 must be in \[0, 1\)",
     "callbacks.ema.decay"),
    (["model=cyclegan", "++callbacks.ema.half_life_images=0"], "callbacks.ema",
     r"callbacks.ema.half_life_images=0 must be a positive number of images", "callbacks.ema.half_life_images"),
]


@pytest.mark.parametrize("overrides,node,message,key", REFUSED, ids=[case[-1] for case in REFUSED])
def test_a_setting_out_of_range_is_refused_naming_a_key_the_config_holds(train_cfg, overrides, node, message, key):
    cfg = train_cfg(*overrides)
    assert OmegaConf.select(cfg, key, default="absent") != "absent", f"{key} is not a key of the config"
    with pytest.raises(Exception) as refused:
        hydra.utils.instantiate(OmegaConf.select(cfg, node), _recursive_=False)
    error = refused.value
    while error.__cause__ is not None:   # (Hydra wraps the class's own error, once per nesting)
        error = error.__cause__
    assert re.search(message, str(error)), str(error)


@pytest.mark.parametrize("entry", ["{every_n_iters:1}", "5"])
def test_a_callback_entry_without_a_target_is_refused_naming_it(train_cfg, entry):
    """An added callback (or logger) entry that builds nothing is named, with the fix."""
    from src.utils.run import run_training
    with pytest.raises(ValueError, match=r"Config 'callbacks.mine' needs a '_target_' key \(or null to disable it\)"):
        run_training(train_cfg("model=cyclegan", f"+callbacks.mine={entry}"))
