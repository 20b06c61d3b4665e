"""Optimizer steps fused into backward: the same update as stepping after backward, with only a
few gradients alive at a time."""
import hydra
import hydra.errors
import pytest
import torch
import torch.nn as nn

import src.models.step_in_backward as step_in_backward
from src.models.optimizers import adam_kernel
from src.models.step_in_backward import stepping_in_backward
from conftest import DATA_OF, MODELS, fit_one_batch, random_batch


def two_group_adam(net: nn.Sequential) -> torch.optim.Adam:
    """Two groups with different settings, so a step must use each parameter's own group."""
    first, rest = list(net[0].parameters()), [p for m in net[1:] for p in m.parameters()]
    return torch.optim.Adam([{"params": first, "lr": 1e-2, "weight_decay": 0.1}, {"params": rest}],
                            lr=1e-3, betas=(0.5, 0.999), **adam_kernel(first + rest))


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    # The last layer is never used by the loss: it must keep no gradient and not move.
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4), nn.Linear(4, 4))


def loss_of(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    return net[2](net[1](net[0](x))).pow(2).mean()


def count_live_grads(net: nn.Module, record: list[int]) -> None:
    """Records, each time a gradient is finished, how many of the net's gradients exist."""
    for p in net.parameters():
        p.register_post_accumulate_grad_hook(lambda _: record.append(sum(q.grad is not None for q in net.parameters())))


def test_stepping_in_backward_is_the_same_update_with_fewer_live_gradients():
    plain, fused = make_net(), make_net()
    plain_opt, fused_opt = two_group_adam(plain), two_group_adam(fused)
    unused_before = fused[3].weight.detach().clone()
    plain_live, fused_live = [], []
    count_live_grads(plain, plain_live)
    count_live_grads(fused, fused_live)
    for step in range(3):
        x = torch.randn(5, 8, generator=torch.Generator().manual_seed(step))
        plain_opt.zero_grad(set_to_none=True)
        loss_of(plain, x).backward()
        plain_opt.step()

        fused_opt.zero_grad(set_to_none=True)
        with stepping_in_backward([fused_opt]):
            loss_of(fused, x).backward()
        assert all(p.grad is None for p in fused.parameters())  # stepped and freed during backward
        fused_opt.step()  # nothing left to step: must not move anything again
    for p, q in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-7)
    for p, q in zip(plain.parameters(), fused.parameters()):
        for key, value in plain_opt.state[p].items():
            torch.testing.assert_close(fused_opt.state[q][key], value, rtol=0, atol=1e-7)
    assert torch.equal(fused[3].weight, unused_before) and fused[3].weight not in fused_opt.state
    assert max(plain_live) == 4 and max(fused_live) == 1  # four gradients of the used layers


def test_gradients_of_an_earlier_backward_are_left_to_the_regular_step():
    """A multi-part update: parameters that only the first part reached are finished before the
    last backward, so the regular step after it must update them, once."""
    plain, fused = make_net(), make_net()
    plain_opt, fused_opt = two_group_adam(plain), two_group_adam(fused)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))

    def second_part(net):  # reaches only the second layer
        return net[2](torch.ones(5, 16)).abs().mean()

    loss_of(plain, x).backward()
    second_part(plain).backward()
    plain_opt.step()

    loss_of(fused, x).backward()
    stepped = []
    original = step_in_backward.step_one
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(step_in_backward, "step_one", lambda opt, g, p: (stepped.append(p), original(opt, g, p)))
        with stepping_in_backward([fused_opt]):
            second_part(fused).backward()
    assert {id(p) for p in stepped} == {id(p) for p in fused[2].parameters()}
    assert all(p.grad is not None for p in fused[0].parameters())
    fused_opt.step()
    for p, q in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-7)


def train_one_iteration(train_cfg, model_name: str, *overrides: str):
    cfg = train_cfg(f"model={model_name}", f"data={DATA_OF[model_name]}", *overrides)
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    torch.manual_seed(1)
    return model, fit_one_batch(model, random_batch(cfg))


def test_small_parameters_are_left_to_the_regular_step():
    plain, fused = make_net(), make_net()
    plain_opt, fused_opt = two_group_adam(plain), two_group_adam(fused)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    loss_of(plain, x).backward()
    plain_opt.step()
    with stepping_in_backward([fused_opt], min_elements=64):
        loss_of(fused, x).backward()
    # the weights (8x16, 16x4) were stepped and freed in backward; the biases (16, 4) wait
    assert [p.grad is None for p in [*fused[0].parameters(), *fused[2].parameters()]] == [True, False, True, False]
    fused_opt.step()
    for p, q in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-7)


# min_elements 0: every parameter in backward; 100: the models' weights in backward, their biases
# and norm parameters (and the tiniest weights) in the regular step.
@pytest.mark.parametrize("min_elements", [0, 100])
@pytest.mark.parametrize("model_name", MODELS)
def test_every_model_makes_the_same_update_with_and_without_stepping_in_backward(train_cfg, model_name, min_elements,
                                                                                  monkeypatch):
    stepped = []
    original = step_in_backward.step_one
    monkeypatch.setattr(step_in_backward, "step_one", lambda opt, g, p: (stepped.append(p), original(opt, g, p)))
    monkeypatch.setattr(step_in_backward, "MIN_ELEMENTS", min_elements)
    on, on_trainer = train_one_iteration(train_cfg, model_name)
    assert on.steps_in_backward
    # Every parameter of at least min_elements is stepped once, inside its player's backward.
    large = [p for p in on.parameters() if p.numel() >= min_elements]
    assert 0 < len(large) and (len(large) < len(list(on.parameters()))) == (min_elements > 0)
    assert sorted(map(id, stepped)) == sorted(map(id, large))
    stepped.clear()
    off, off_trainer = train_one_iteration(train_cfg, model_name, "model.optimizer.step_in_backward=false")
    assert not off.steps_in_backward and not stepped
    assert on_trainer.global_step == off_trainer.global_step == on.optimizer_steps_per_iter
    for (name, p), q in zip(on.named_parameters(), off.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("model_name,loss", [("cyclegan", "wgangp"), ("ugatit", "wgangp"), ("cyclegan", "wgan")])
def test_a_gradient_penalty_or_weight_clip_makes_the_same_update_stepping_in_backward(train_cfg, model_name, loss,
                                                                                     monkeypatch):
    """The penalty's double backward (autograd.grad with create_graph) runs inside the critic's
    step, and WGAN's clip after it: every tensor stepped in backward, the update is the plain one."""
    from src.models import base
    penalties, penalty = [], base.gradient_penalty
    monkeypatch.setattr(base, "gradient_penalty", lambda *args, **kwargs: penalties.append(1) or penalty(*args, **kwargs))
    monkeypatch.setattr(step_in_backward, "MIN_ELEMENTS", 0)
    on, _ = train_one_iteration(train_cfg, model_name, f"loss={loss}")
    assert bool(penalties) == (loss == "wgangp")
    off, _ = train_one_iteration(train_cfg, model_name, f"loss={loss}", "model.optimizer.step_in_backward=false")
    assert on.steps_in_backward and not off.steps_in_backward
    assert (on.weight_clip is not None) == (loss == "wgan")
    for (name, p), q in zip(on.named_parameters(), off.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


def test_auto_steps_in_backward_on_cpu_and_an_unknown_setting_names_the_key(train_cfg):
    model = hydra.utils.instantiate(train_cfg("model=pix2pix").model, _recursive_=False)
    assert model.optimizer_cfg["step_in_backward"] == "auto" and model.steps_in_backward
    with pytest.raises(hydra.errors.InstantiationException, match="step_in_backward='sometimes' must be true"):
        hydra.utils.instantiate(train_cfg("model=pix2pix", "model.optimizer.step_in_backward=sometimes").model,
                                _recursive_=False)
