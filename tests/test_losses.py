import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer import accuracy, cross_entropy, one_hot
from fn_trainer.core.losses import EPSILON

labels_and_classes = st.integers(1, 12).flatmap(
    lambda c: st.tuples(st.lists(st.integers(0, c - 1), min_size=0, max_size=40), st.just(c)))


@given(labels_and_classes)
def test_one_hot_properties(data):
    values, n_classes = data
    y = torch.tensor(values, dtype=torch.int64)
    oh = one_hot(y, n_classes)
    assert oh.shape == (len(values), n_classes)
    assert oh.dtype == torch.float32
    assert set(oh.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(oh.sum(1), torch.ones(len(values)))
    if values:
        assert torch.equal(oh.argmax(1), y)


def test_one_hot_example_from_the_homework():
    expected = torch.tensor([[0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]],
                            dtype=torch.float32)
    assert torch.equal(one_hot(torch.tensor([1, 0, 3, 4]), 5), expected)


@given(st.integers(2, 10), st.sampled_from([-1, 0]))
def test_one_hot_rejects_out_of_range(n_classes, where):
    bad = -1 if where == -1 else n_classes
    with pytest.raises(ValueError, match=r"\[0, %d\)" % n_classes):
        one_hot(torch.tensor([0, bad]), n_classes)


@pytest.mark.parametrize("y", [torch.tensor([0.0, 1.0]), torch.tensor([True, False]),
                               torch.tensor([[0, 1]])])
def test_one_hot_rejects_non_integer_or_wrong_rank(y):
    with pytest.raises(ValueError, match="labels"):
        one_hot(y, 3)


def test_cross_entropy_matches_closed_form_and_clips():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    targets = one_hot(torch.tensor([0, 0]), 3)
    expected = -(math.log(0.7) + math.log(EPSILON)) / 2
    assert cross_entropy(probs, targets).item() == pytest.approx(expected, rel=1e-6)


@settings(deadline=None)
@given(st.integers(1, 16), st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_cross_entropy_equals_nll_of_log_for_interior_probs(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64), 1)
    labels = torch.randint(0, c, (n,), generator=g)
    got = cross_entropy(probs, one_hot(labels, c).double())
    ref = torch.nn.functional.nll_loss(probs.clamp(EPSILON, 1 - EPSILON).log(), labels)
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)


def test_cross_entropy_keeps_graph():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = cross_entropy(torch.softmax(logits, 1), one_hot(torch.tensor([0, 1, 2, 0]), 3))
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=30))
def test_accuracy_counts_argmax_matches(pairs):
    pred = torch.tensor([p for p, _ in pairs])
    y = torch.tensor([t for _, t in pairs])
    probs = one_hot(pred, 5) * 0.9 + 0.02
    expected = sum(p == t for p, t in pairs) / len(pairs)
    assert accuracy(probs, y).item() == pytest.approx(expected, abs=1e-15)
    assert accuracy(probs, one_hot(y, 5)).item() == pytest.approx(expected, abs=1e-15)


def test_a_step_on_an_empty_minibatch_is_refused():
    """The mean over no sample is NaN: a step would log it and still advance Adam's count."""
    from fn_trainer import NetworkConfiguration, adam, build_network, make_step

    with pytest.raises(ValueError, match=r"^cross_entropy needs probs \(N, C\) of N >= 1 samples, got shape \(0, 10\)$"):
        cross_entropy(torch.zeros(0, 10), torch.zeros(0, 10))
    net = build_network("mlp", NetworkConfiguration(dense_hiddens=(8,)))
    params = net.init(0)
    with pytest.raises(ValueError, match="N >= 1 samples"):
        make_step(net.apply, adam())(params, adam().init(params), (torch.zeros(0, 1, 28, 28), torch.zeros(0, 10)))


def test_the_accuracy_of_no_samples_is_refused_like_their_loss():
    with pytest.raises(ValueError, match=r"^accuracy needs probs \(N, C\) of N >= 1 samples, got shape \(0, 10\)$"):
        accuracy(torch.empty(0, 10), torch.empty(0, 10))


@pytest.mark.parametrize("eps", [0.5, 0.7, -1.0, float("nan"), "1e-9", True])
def test_a_clipping_eps_outside_0_to_one_half_is_refused(eps):
    # eps 0.7 clips every probability to one value; -1 lets log(0) through
    with pytest.raises(ValueError, match=r"^eps must be a number in \[0, 0\.5\)"):
        cross_entropy(torch.tensor([[0.9, 0.1]]), torch.tensor([[1.0, 0.0]]), eps=eps)
