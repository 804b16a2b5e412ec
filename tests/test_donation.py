"""A step that overwrites the state it is given (``compile_step(..., donate=True)``) under the
training loop: the caller's tensors, the replay of a divergence and interrupts stay as with
a pure step. The steps here donate eagerly (``written_into_arguments``), which gives the pure
step's values bit for bit, so every run is compared with the pure step's run exactly."""
import signal

import pytest
import torch

from fn_trainer import NetworkConfiguration, adam, build_network, make_evaluate, make_step
from fn_trainer.training.checkpoint import load_checkpoint
from fn_trainer.training.compiled import DonatingStep, written_into_arguments
from fn_trainer.training.fit import fit
from fn_trainer.training.population import Member, fit_population

SHAPE = (1, 8, 8)
STEPS_PER_EPOCH = 6  # 96 samples, minibatches of 16


def problem(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, *SHAPE, generator=g)
    return (X, torch.randint(0, 10, (n,), generator=g)), (X[:32], torch.randint(0, 10, (32,), generator=g))


NET = build_network("mlp", NetworkConfiguration(dense_hiddens=(16,)), input_shape=SHAPE)


def run(donate, lr=1e-2, epochs=3, hook=None, params=None, nan_at=None, **kw):
    """``fit`` with the pure step or the donating one; ``hook(count)`` runs after the step's
    update (the state already overwritten when donating), before the step returns; the
    loss of step ``nan_at`` (a count) is reported as NaN."""
    opt = adam(lr)
    base = make_step(NET.apply, opt)
    inner = written_into_arguments(base) if donate else base

    def step(p, s, batch):
        params, state, metrics = inner(p, s, batch)
        if hook is not None:
            hook(int(state.count))
        if int(state.count) == nan_at:
            metrics = {**metrics, "loss": torch.tensor(float("nan"))}
        return params, state, metrics

    params = NET.init(1) if params is None else params
    train, valid = problem()
    kw = {"batch_size": 16, "shuffle": True, "seed": 7, "progress": False, **kw}
    return fit(DonatingStep(step) if donate else step, make_evaluate(NET.apply), params, opt.init(params),
               train, valid, epochs=epochs, **kw)


def assert_same_run(a, b):
    assert a.logs == b.logs and a.diverged == b.diverged
    for x, y in zip(torch.utils._pytree.tree_leaves((a.params, a.opt_state)),
                    torch.utils._pytree.tree_leaves((b.params, b.opt_state))):
        assert torch.equal(x, y)


def test_fit_with_a_donating_step_keeps_the_callers_tensors_and_trains_as_the_pure_step():
    params = NET.init(1)
    before = {k: v.clone() for k, v in params.items()}
    result = run(True, params=params)
    assert all(torch.equal(params[k], before[k]) for k in params)
    assert_same_run(result, run(False))


@pytest.mark.parametrize("how", [dict(lr=1e20), dict(nan_at=11)])  # epoch 1's 2nd step, epoch 2's 5th
def test_a_divergence_under_a_donating_step_is_located_and_kept_as_under_the_pure_step(how):
    # the state a failing step received must be the one kept, though every later step of
    # the epoch overwrote its tensors
    pure, donating = run(False, **how), run(True, **how)
    assert pure.diverged is not None and " at step " in pure.diverged
    assert_same_run(donating, pure)


def test_population_members_that_diverge_under_the_compiled_donating_step_keep_their_state():
    members = [Member(seed=0, lr=1e-2), Member(seed=1, lr=1e20)]
    train, valid = problem()
    got = fit_population(NET, members, train, valid, epochs=2, batch_size=16, compile=True, progress=False)
    want = fit_population(NET, members, train, valid, epochs=2, batch_size=16, progress=False)
    assert got[0].diverged is None and got[1].diverged == want[1].diverged is not None
    # the stopped member's state is the one its failing step received (the replay copies it)
    for k in want[1].params:
        torch.testing.assert_close(got[1].params[k], want[1].params[k], rtol=1e-4, atol=1e-3)


@pytest.fixture
def sigint_raises():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("count", [4, 6])  # mid-epoch, and an epoch's last step
def test_an_interrupt_during_a_donating_step_is_raised_after_it_and_saved_with_it(tmp_path, count, sigint_raises):
    path = tmp_path / "c.pt"

    def interrupt(at):
        if at == count:
            signal.raise_signal(signal.SIGINT)  # the state is overwritten, the loop has not yet recorded it

    with pytest.raises(KeyboardInterrupt):
        run(True, hook=interrupt, checkpoint=path)
    data = load_checkpoint(path)
    assert data["epoch"] * STEPS_PER_EPOCH + data["batch"] == count
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
    assert_same_run(run(True, checkpoint=path, resume=True), run(False))


def test_a_second_interrupt_within_a_donating_step_stops_it_and_saves_its_epochs_start(tmp_path, sigint_raises):
    path = tmp_path / "c.pt"

    def interrupt_twice(at):
        if at == 10:  # the 4th step of the second epoch
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run(True, hook=interrupt_twice, checkpoint=path)
    data = load_checkpoint(path)
    assert (data["epoch"], data["batch"]) == (1, 0)  # not the torn state of step 10 at position 9
    assert_same_run(run(True, checkpoint=path, resume=True), run(False))


def test_a_donating_step_called_as_a_function_is_pure():
    # a wrapper that knows nothing of donation calls the step itself: it must work on copies
    opt = adam(1e-2)
    step = DonatingStep(written_into_arguments(make_step(NET.apply, opt)))
    params = NET.init(1)
    before = {k: v.clone() for k, v in params.items()}
    train, valid = problem()
    result = fit(lambda p, s, batch: step(p, s, batch), make_evaluate(NET.apply), params, opt.init(params), train,
                 valid, epochs=2, batch_size=16, shuffle=True, seed=7, progress=False)
    assert all(torch.equal(params[k], before[k]) for k in params)
    assert_same_run(result, run(False, epochs=2))


def test_written_into_arguments_puts_each_tensor_where_its_name_was():
    def reordered(p, s, batch):  # the same names in another order
        return {k: p[k] + 1 for k in sorted(p)}, s, {}
    given = {"b": torch.zeros(3), "a": torch.full((3,), 10.0)}
    out = written_into_arguments(reordered)(given, None, None)[0]
    assert out is given and given["a"].tolist() == [11.0] * 3 and given["b"].tolist() == [1.0] * 3

    def reshaped(p, s, batch):  # a (1,) result would be broadcast into the (3,) parameter
        return {"w": p["w"].sum(0, keepdim=True)}, s, {}
    with pytest.raises(ValueError, match=r"\['w'\] changed its type, shape or dtype"):
        written_into_arguments(reshaped)({"w": torch.ones(3)}, None, None)

    def renamed(p, s, batch):
        return {"v": p["w"]}, s, {}
    with pytest.raises(ValueError, match="with the names it was given"):
        written_into_arguments(renamed)({"w": torch.ones(3)}, None, None)


def test_an_interrupt_during_the_first_step_of_a_shape_which_compiles_is_not_held(tmp_path, sigint_raises):
    # the first step runs on copies: an interrupt there tears nothing and must not wait for
    # the compilation to end
    path = tmp_path / "c.pt"
    reached = []

    def interrupt(at):
        if at == 1:
            signal.raise_signal(signal.SIGINT)
            reached.append(at)  # not reached: the interrupt is raised at once

    with pytest.raises(KeyboardInterrupt):
        run(True, hook=interrupt, checkpoint=path)
    assert reached == [] and load_checkpoint(path)["batch"] == 0


class Terminated(KeyboardInterrupt):
    pass


def test_at_a_second_signal_within_a_donating_step_the_first_is_raised(tmp_path, sigint_raises):
    def terminate(number, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)

    def term_then_int(at):
        if at == 10:
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)
    try:
        with pytest.raises(Terminated):
            run(True, hook=term_then_int, checkpoint=tmp_path / "c.pt")
        assert signal.getsignal(signal.SIGTERM) is terminate
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_state_that_keeps_a_given_tensor_under_another_name_gets_its_value_before_the_update():
    def keeps_last(p, s, batch):  # an optimizer that remembers the parameters it was given
        return {"w": p["w"] - 1}, {"last": p["w"]}, {}
    donated = written_into_arguments(keeps_last)({"w": torch.zeros(2)}, {"last": torch.ones(2)}, None)
    assert donated[0]["w"].tolist() == [-1.0, -1.0] and donated[1]["last"].tolist() == [0.0, 0.0]


def test_a_donating_step_called_as_a_function_takes_parameters_that_require_grad():
    module = torch.nn.Linear(3, 2)
    step = DonatingStep(written_into_arguments(lambda p, s, batch: ({k: v * 2 for k, v in p.items()}, s, {})))
    params = dict(module.named_parameters())
    out = step(params, {}, None)[0]
    assert torch.equal(out["weight"], 2 * module.weight.detach()) and not out["weight"].requires_grad
