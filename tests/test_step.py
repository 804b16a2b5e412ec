import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer import (
    NetworkConfiguration,
    adam,
    build_network,
    cross_entropy,
    global_norm,
    make_step,
    one_hot,
)


def _setup(seed: int, network_type: str = "mlp"):
    config = NetworkConfiguration(n_channels=(4, 6), kernel_sizes=(3, 3), strides=(1, 1),
                                  paddings=(0, 0), dense_hiddens=(16,))
    net = build_network(network_type, config, input_shape=(1, 12, 12))
    params = net.init(seed)
    opt = adam(1e-2)
    g = torch.Generator().manual_seed(seed)
    batch = (torch.randn(8, 1, 12, 12, generator=g), one_hot(torch.randint(0, 10, (8,), generator=g), 10))
    return net, params, opt, batch


def _clone(tree):
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return type(tree)(*map(_clone, tree)) if hasattr(tree, "_fields") else tuple(map(_clone, tree))
    return tree


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))


@settings(deadline=None, max_examples=8)
@given(st.integers(0, 10_000), st.sampled_from(["mlp", "cnn"]))
def test_step_is_pure(seed, network_type):
    net, params, opt, batch = _setup(seed, network_type)
    state = opt.init(params)
    step = make_step(net.apply, opt)
    inputs = (params, state, batch)
    snapshot = _clone(inputs)
    out1 = step(*inputs)
    assert _equal(inputs, snapshot), "step mutated its inputs"
    out2 = step(*snapshot)
    assert _equal(out1, out2), "equal inputs gave different outputs"
    new_params, new_state, metrics = out1
    assert not _equal(new_params, params)
    assert int(new_state.count) == 1


def test_step_metrics_are_the_batch_loss_accuracy_and_gradient_norm():
    net, params, opt, (x, t) = _setup(0)
    _, _, metrics = make_step(net.apply, opt)(params, opt.init(params), (x, t))
    probs = net.apply(params, x)
    grads = torch.func.grad(lambda p: cross_entropy(net.apply(p, x), t))(params)
    assert torch.allclose(metrics["loss"], cross_entropy(probs, t))
    assert metrics["accuracy"].item() == (probs.argmax(1) == t.argmax(1)).float().mean().item()
    assert torch.allclose(metrics["grad_norm"], global_norm(grads))
    assert all(v.dim() == 0 for v in metrics.values())


def test_step_reduces_loss_on_a_fixed_batch():
    net, params, opt, batch = _setup(1)
    state = opt.init(params)
    step = make_step(net.apply, opt)
    losses = []
    for _ in range(30):
        params, state, metrics = step(params, state, batch)
        losses.append(metrics["loss"].item())
    assert losses[-1] < 0.5 * losses[0]


def test_the_step_is_differentiable_through_training_steps():
    """Parameters that require gradients keep their autograd graph through the steps: the
    gradient of the loss after two steps with respect to the first parameters is that of
    the same two steps written out with torch.func (whose parameters are plain tensors)."""
    net, params, opt, batch = _setup(0)
    step = make_step(net.apply, opt)

    def loss_after_two_steps(start):
        p, s = start, opt.init(start)
        for _ in range(2):
            p, s, _ = step(p, s, batch)
        return cross_entropy(net.apply(p, batch[0]), batch[1])

    start = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss_after_two_steps(start).backward()
    expected = torch.func.grad(loss_after_two_steps)(params)
    assert all(start[k].grad is not None and torch.allclose(start[k].grad, expected[k], rtol=1e-5, atol=1e-8)
               for k in params)
    assert any(bool(start[k].grad.abs().max() > 0) for k in params)
