import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer.app.solve import (
    TOLERANCE,
    fixed_solution,
    mlp_config,
    reference_budget,
    solve,
    solve_cnn_channels,
    solve_cnn_kernel,
    solve_mlp_depth,
)
from fn_trainer.core.config import NetworkConfiguration
from fn_trainer.core.networks import build_network, count_parameters


def built_count(network_type, config, input_shape=(1, 28, 28), n_classes=10):
    net = build_network(network_type, config, input_shape=input_shape, n_classes=n_classes)
    return sum(p.numel() for p in net.module.parameters())


def test_reference_mlp_has_269322_parameters():
    assert reference_budget() == 269_322
    assert built_count("mlp", mlp_config((256, 256))) == 269_322


def test_deep_mlp_depth_is_closest_and_within_budget():
    s = solve_mlp_depth(64)
    assert abs(s.difference) <= TOLERANCE
    assert s.config.dense_hiddens == (64,) * s.value
    assert s.n_params == built_count("mlp", s.config) == reference_budget() + s.difference
    for other in (s.value - 1, s.value + 1):  # the neighbours are not closer
        assert abs(count_parameters("mlp", mlp_config((64,) * other)) - reference_budget()) >= abs(s.difference)


def test_cnn_kernel_solves_to_3():
    s = solve_cnn_kernel((16, 32, 45), (256, 256))
    assert s.value == 3
    assert s.config == NetworkConfiguration((16, 32, 45), (3, 3, 3), (1, 1, 1), (0, 0, 0), (256, 256))
    assert abs(s.difference) <= TOLERANCE
    assert s.n_params == built_count("cnn", s.config)


def test_shallow_cnn_channels_solved_within_budget():
    s = solve_cnn_channels(28, (256, 256))
    assert s.config.kernel_sizes == (28,) and s.config.n_channels == (s.value,)
    assert abs(s.difference) <= TOLERANCE
    assert s.n_params == built_count("cnn", s.config)
    for other in (s.value - 1, s.value + 1):
        c = NetworkConfiguration((other,), (28,), (1,), (0,), (256, 256))
        assert abs(count_parameters("cnn", c) - reference_budget()) >= abs(s.difference)


def test_deep_cnn_is_measured_not_solved():
    config = NetworkConfiguration((8, 16, 32, 64), (1,) * 4, (1,) * 4, (0,) * 4, (256, 256))
    m = fixed_solution("cnn", config, reference_budget())
    assert m.n_params == built_count("cnn", config)
    assert m.difference == m.n_params - 269_322
    assert m.difference > TOLERANCE  # the question fixes this network; it is over the budget


def test_solve_skips_invalid_candidates():
    # three k x k convs, each pooled 2x2, on 28x28: k = 5 gives 24 -> 12 -> 8 -> 4, too small for
    # the third 5x5 kernel, and larger kernels fail earlier, so only k <= 4 fits. Invalid
    # candidates come first: a solver that scored them (as 0 parameters or any other count) or
    # stopped at the first one would not return these.
    make = lambda k: NetworkConfiguration((4, 4, 4), (k,) * 3, (1,) * 3, (0,) * 3, ())  # noqa: E731
    count = lambda k: (k * k + 1) * 4 + 2 * (4 * k * k + 1) * 4 + (4 * 4 * 4 + 1) * 10  # noqa: E731
    smallest = solve("cnn", make, range(28, 0, -1), target=1, tolerance=count(1))
    largest = solve("cnn", make, range(28, 0, -1), target=10**6, tolerance=10**6)
    assert (smallest.value, smallest.n_params) == (1, count(1)) == (1, 698)
    assert (largest.value, largest.n_params) == (4, count(4)) == (4, 1238)
    for s in (smallest, largest):
        assert s.n_params == built_count("cnn", s.config) and s.config == make(s.value)


def test_solve_raises_when_nothing_is_within_tolerance():
    with pytest.raises(ValueError, match="within 10 of 269,322"):
        solve("mlp", lambda d: mlp_config((64,) * d), range(1, 60), reference_budget(), tolerance=10)


def test_solve_rejects_bad_target():
    with pytest.raises(ValueError, match="target"):
        solve("mlp", lambda d: mlp_config((64,) * d), range(1, 3), 0)


small_conv = st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 2), st.integers(0, 2))


@settings(max_examples=40, deadline=None)
@given(layers=st.lists(small_conv, min_size=1, max_size=3),
       dense=st.lists(st.integers(1, 20), max_size=3),
       size=st.integers(8, 32), channels=st.integers(1, 3), n_classes=st.integers(2, 12))
def test_analytic_count_equals_built_network(layers, dense, size, channels, n_classes):
    config = NetworkConfiguration(*map(tuple, zip(*layers)), tuple(dense))
    shape = (channels, size, size)
    for network_type in ("mlp", "cnn"):
        try:
            n = count_parameters(network_type, config, shape, n_classes)
        except ValueError:  # a kernel or pool that does not fit: building must fail too
            with pytest.raises(ValueError):
                build_network(network_type, config, input_shape=shape, n_classes=n_classes)
            continue
        assert n == built_count(network_type, config, shape, n_classes)


@settings(max_examples=25, deadline=None)
@given(width=st.integers(8, 128), target=st.integers(50_000, 400_000))
def test_depth_solution_is_the_closest(width, target):
    try:
        s = solve_mlp_depth(width, target, tolerance=10**9)
    except ValueError:
        return
    # The count grows with depth, so the closest depth is the one whose neighbours are not closer.
    count = lambda d: count_parameters("mlp", mlp_config((width,) * d))  # noqa: E731
    assert s.n_params == count(s.value) and s.difference == s.n_params - target
    for d in (s.value - 1, s.value + 1):
        if 1 <= d <= 256:
            assert abs(count(d) - target) >= abs(s.difference)
