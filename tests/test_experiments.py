import dataclasses
import math

import matplotlib.image
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer.app.experiments import EXPERIMENTS, experiment
from fn_trainer.app.experiments.configurations import Configuration, by_configuration
from fn_trainer.app.experiments.equivariance import equivariance_maps
from fn_trainer.app.experiments.figures import COLORS, curves
from fn_trainer.app.experiments.formatting import differences, runs_table, spread_table, summary
from fn_trainer.app.experiments.lr_sweep import best_pair
from fn_trainer.app.experiments.records import RunRecord, RunSpec, finite_logs
from fn_trainer.app.plots import Curve, plot_curves, plot_map
from fn_trainer.app.report import assemble, markdown_table, write_section
from fn_trainer.core.config import NetworkConfiguration


def blob_image(seed: int, size: int = 28) -> torch.Tensor:
    """A positive image with structure (a bright random rectangle on noise)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(size, size, generator=g) * 0.2
    r, c = torch.randint(6, size - 12, (2,), generator=g).tolist()
    image[r:r + 8, c:c + 5] += 0.8
    return image


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), image_seed=st.integers(0, 1000), shift=st.integers(1, 8))
def test_convolution_is_shift_equivariant_away_from_borders(seed, image_seed, shift):
    result = equivariance_maps(blob_image(image_seed), seed, shift)
    stats = result["stats"]
    assert stats["shift_interior_max"] == 0.0 and stats["shift_interior_mean"] == 0.0
    assert stats["border"] == shift
    b = shift
    assert np.array_equal(result["shift_difference"][b:-b, b:-b], np.zeros((24 - 2 * b,) * 2))
    assert np.abs(result["features"]).max() > 0  # the model drawn is not dead


def test_rotation_is_not_equivariant_for_an_asymmetric_kernel():
    stats = equivariance_maps(blob_image(0), 197331)["stats"]
    assert stats["rotation_interior_max"] > 1e-3 * stats["feature_interior_mean"]


def test_equivariance_maps_shapes_and_dtypes():
    result = equivariance_maps(blob_image(1).reshape(1, 28, 28), 5)
    assert result["image"].shape == (28, 28)
    for key in ("features", "shift_difference", "rotation_difference"):
        assert result[key].shape == (24, 24) and result[key].dtype == np.float64
        assert (result[key] >= 0).all()
    assert result["stats"]["shift_max"] >= result["stats"]["shift_interior_max"]


def test_equivariance_maps_is_deterministic_in_seed():
    a = equivariance_maps(blob_image(2), 11)
    b = equivariance_maps(blob_image(2), 11)
    assert np.array_equal(a["features"], b["features"])


def test_equivariance_maps_rejects_bad_input():
    with pytest.raises(TypeError, match="image"):
        equivariance_maps(np.zeros((28, 28)), 0)
    with pytest.raises(ValueError, match="image"):
        equivariance_maps(torch.zeros(2, 28, 28), 0)
    with pytest.raises(ValueError, match="shift"):
        equivariance_maps(blob_image(0), 0, shift=12)


def test_every_experiment_module_has_name_and_run():
    for name in EXPERIMENTS:
        module = experiment(name)
        assert module.NAME == name and callable(module.run)
    with pytest.raises(ValueError, match="experiment must be one of"):
        experiment("nope")


def spec(name="r", lr=0.01, normalization=True, epochs=3, seed=0):
    return RunSpec(name, f"label {name}", "mlp", NetworkConfiguration((), (), (), (), (8,)), lr, normalization,
                   32, epochs, seed)


def seed_run(seed, accuracy, diverged=None, lr=0.01):
    """A run of configuration ``spec()`` (named after its seed, as runs are) with these validation accuracies."""
    return RunRecord(dataclasses.replace(spec(lr=lr, seed=seed), name=f"r-s{seed}"), f"h{seed}", 10,
                     {"validation_accuracy": accuracy, "train_accuracy": accuracy}, diverged, 1.0)


def test_a_configuration_averages_its_seeds_epoch_by_epoch_and_ends_where_a_seed_diverged():
    runs = (seed_run(0, [0.1, 0.5, 0.7, 0.6]), seed_run(1, [0.1, 0.3, 0.5], "diverged in epoch 3"),
            seed_run(2, [0.4, 0.4, 0.6, 0.9]))
    c = Configuration(runs)
    assert c.mean_curve("validation_accuracy") == pytest.approx([0.2, 0.4, 0.6, None], abs=1e-15)
    assert c.mean_curve("validation_accuracy")[3] is None
    assert c.band("validation_accuracy") == ([0.1, 0.3, 0.5, None], [0.4, 0.5, 0.7, None])
    assert c.finals() == [0.6, 0.5, 0.9] and c.bests() == [0.7, 0.5, 0.9]
    assert c.final_spread().mean == pytest.approx(2.0 / 3) and c.best_spread().n == 3
    assert c.diverged == "1 of 3 seeds diverged" and c.seeds == [0, 1, 2]
    (curve,) = curves([c], "validation_accuracy")
    assert curve.band == c.band("validation_accuracy") and curve.diverged == c.diverged


def test_one_seed_is_the_run_itself_without_a_band():
    run = seed_run(5, [0.1, 0.35, float("nan")], "diverged in epoch 2: loss=nan")
    run.logs = finite_logs(run.logs)
    c = Configuration((run,))
    assert c.mean_curve("validation_accuracy") == run.curve("validation_accuracy") and c.band("train_accuracy") is None
    assert c.diverged == run.diverged and c.finals() == [] and c.final_spread() is None
    (curve,) = curves([c], "validation_accuracy", suffix=" — validation")
    assert curve == Curve("label r — validation", run.curve("validation_accuracy"), 0, "tab:blue", "-",
                          "diverged", None)


def test_spread_table_and_best_pair_give_no_final_accuracy_where_a_seed_diverged():
    # the diverged seed's last finite value (0.9, epoch 1) is not a last-epoch accuracy
    mixed = Configuration((seed_run(0, [0.5, 0.9], "diverged in epoch 2"), seed_run(1, [0.5, 0.55, 0.6]),
                           seed_run(2, [0.5, 0.55, 0.6])))
    fine = Configuration((seed_run(0, [0.5, 0.55, 0.6]), seed_run(1, [0.5, 0.6, 0.7])))
    table = spread_table([mixed, fine]).splitlines()
    assert "| n/a (1 of 3 seeds diverged) | 0.7000 ± 0.1732 | 1 |" in table[2]  # the best still counts
    assert "| 0.6500 ± 0.0707 | 0.6500 ± 0.0707 | 0 |" in table[3]
    assert "(mean ± sample std), final n/a (1 of 3 seeds diverged); mean above 80%: no." in best_pair(mixed)
    alone = Configuration((seed_run(0, [0.5, 0.9], "diverged in epoch 2: loss=nan"),))
    assert "(epoch 1), final n/a (diverged); above 80%: yes." in best_pair(alone)
    assert "(epoch 2), final 0.6000; above 80%: no." in best_pair(Configuration((seed_run(0, [0.5, 0.55, 0.6]),)))


def test_a_figure_says_how_many_seeds_diverged_and_tells_every_configuration_apart(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: drawn.append(k) or real(self, *a, **k))
    one_of_three = Configuration((seed_run(0, [0.5, 0.9], "diverged in epoch 2"), seed_run(1, [0.5, 0.55, 0.6]),
                                  seed_run(2, [0.5, 0.55, 0.6])))
    alone = Configuration((seed_run(0, [0.5, 0.9], "diverged in epoch 2: loss=nan"),))
    plot_curves(curves([one_of_three, alone], "validation_accuracy"), tmp_path / "c.png", title="t", ylabel="a")
    labels = [k["label"] for k in drawn if "label" in k]
    assert labels == ["label r — 1 of 3 seeds diverged", "label r — diverged"]
    many = [Configuration((seed_run(0, [0.5, 0.6], lr=lr),)) for lr in [10.0 ** -k for k in range(1, 14)]]
    looks = [(c.color, c.marker) for c in curves(many, "validation_accuracy")]
    assert len(set(looks)) == len(many) and looks[len(COLORS)][1] is not None


def test_differences_give_no_final_accuracy_for_configurations_with_diverged_runs():
    fine = Configuration((seed_run(0, [0.1, 0.5, 0.7]), seed_run(1, [0.2, 0.6, 0.8])))
    broken = Configuration((seed_run(0, [0.1], "diverged in epoch 2"), seed_run(1, [0.2, 0.4, 0.5])))
    _, _, line = differences([("broken against fine", broken, fine)])
    assert line.startswith("- broken against fine: final n/a (1 of 2 seeds of the first diverged: ")
    assert "; best -0.4500 [" in line  # the best accuracy before diverging still counts
    _, _, line = differences([("fine against fine", fine, fine)])
    assert line.startswith("- fine against fine: final +0.0000 [")


def test_runs_group_into_configurations_by_everything_but_the_seed():
    a0, a1 = seed_run(0, [0.1]), seed_run(1, [0.2])
    b0 = seed_run(0, [0.3], lr=0.001)
    groups = by_configuration([a0, b0, a1])
    assert [g.runs for g in groups] == [(a0, a1), (b0,)]
    with pytest.raises(ValueError, match="must differ only in their seed"):
        Configuration((a0, b0))
    with pytest.raises(ValueError, match="at least one run"):
        Configuration(())


def test_config_hash_changes_with_every_setting_but_not_the_name():
    base = spec()
    h = base.config_hash("data")
    assert spec(name="other").config_hash("data") == h
    assert base.config_hash("other data") != h
    for changed in (spec(lr=0.001), spec(normalization=False), spec(epochs=4)):
        assert changed.config_hash("data") != h


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32)), max_size=8))
def test_record_round_trips_through_json(values):
    logs = finite_logs({"validation_accuracy": values, "train_accuracy": values})
    assert all(v is None or math.isfinite(v) for v in logs["validation_accuracy"])
    record = RunRecord(spec(), "abc", 10, logs, None, 1.5)
    again = RunRecord.from_json(record.to_json())
    assert again == record
    best, epoch = again.best()
    finite = [v for v in logs["validation_accuracy"] if v is not None]
    assert best == (max(finite) if finite else None)
    if finite:
        assert logs["validation_accuracy"][epoch] == best


def test_runs_table_and_summary_state_divergence():
    ok = RunRecord(spec("a"), "h1", 10, {"validation_accuracy": [0.1, 0.5], "train_accuracy": [0.1, 0.6]}, None, 2.0)
    bad = RunRecord(spec("b", lr=10.0), "h2", 10, {"validation_accuracy": [0.1], "train_accuracy": [0.1]},
                    "diverged in epoch 1 at step 3 of 9: loss=nan", 1.0)
    table = runs_table([ok, bad])
    assert "| label a |" in table and "0.5000 (epoch 1)" in table
    assert "| `diverged in epoch 1 at step 3 of 9` |" in table
    assert "DIVERGED" in summary(bad) and "ok" in summary(ok)
    forged = dataclasses.replace(bad, diverged="![x](//example.invalid/b.png) `[y](//example.invalid)`: more")
    assert "| `` ![x](//example.invalid/b.png) `[y](//example.invalid)` `` |" in runs_table([forged])


def test_a_bar_in_a_cell_stays_in_its_cell():
    row = markdown_table(["run", "diverged"], [["mlp", "loss | nan"]]).splitlines()[2]
    assert row == "| mlp | loss \\| nan |"


def test_markdown_table_shape():
    table = markdown_table(["a", "b"], [[1, 2], [3, 4]]).splitlines()
    assert table == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]


def test_report_sections_follow_question_order_and_replace(tmp_path):
    write_section(tmp_path, "cnn", lambda: "## 4. cnn v1")
    write_section(tmp_path, "equivariance", lambda: "## 1. eq")
    write_section(tmp_path, "cnn", lambda: "## 4. cnn v2")
    report = (tmp_path / "report.md").read_text()
    assert report.index("## 1. eq") < report.index("## 4. cnn v2") and "v1" not in report
    assert assemble(tmp_path) == tmp_path / "report.md"
    with pytest.raises(ValueError):
        write_section(tmp_path, "../escape", lambda: "x")


def read_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def test_plot_curves_draws_diverged_and_missing_values(tmp_path):
    path = plot_curves([Curve("fine", [0.1, 0.5, 0.7]),
                        Curve("broken", [0.1, None, float("nan")], diverged="diverged in epoch 2"),
                        Curve("never finite", [None], diverged="diverged in epoch 1")],
                       tmp_path / "c.png", title="t", ylabel="accuracy")
    image = read_png(path)
    assert image.shape[0] > 300 and image.shape[1] > 300


def test_plot_curves_shades_a_band_in_the_curve_colour_where_both_sides_are_finite(tmp_path, monkeypatch):
    import matplotlib.axes

    shaded = []
    real = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda self, x, low, high, **k: shaded.append((list(x), list(low), list(high), k))
                        or real(self, x, low, high, **k))
    low, high = [0.1, 0.4, None, 0.6], [0.2, 0.6, 0.7, 0.8]
    banded = read_png(plot_curves([Curve("mean", [0.15, 0.5, 0.65, 0.7], start=1, color="tab:green",
                                         band=(low, high)), Curve("alone", [0.3, 0.3])],
                                  tmp_path / "band.png", title="t", ylabel="accuracy"))
    (x, lows, highs, kwargs), = shaded  # one band: the curve without one has none
    assert x == [1, 2, 3, 4] and lows[:2] == low[:2] and lows[3] == 0.6 and highs == high
    assert list(kwargs["where"]) == [True, True, False, True] and kwargs["color"] == "tab:green"
    plain = read_png(plot_curves([Curve("mean", [0.15, 0.5, 0.65, 0.7], start=1, color="tab:green"),
                                  Curve("alone", [0.3, 0.3])], tmp_path / "plain.png", title="t", ylabel="accuracy"))
    assert banded.shape == plain.shape and not np.array_equal(banded, plain)
    with pytest.raises(ValueError, match="curve 'b': band must be \\(low, high\\)"):
        Curve("b", [0.1, 0.2], band=([0.1], [0.2, 0.3]))


def test_plot_curves_draws_curves_that_all_diverged_at_once_on_a_log_scale(tmp_path):
    # every seed diverged in the first epoch: no finite value and an empty band
    curves = [Curve(name, [None, None], diverged="2 of 2 seeds diverged", band=([None, None], [None, None]))
              for name in ("deep", "wide")]
    path = plot_curves(curves, tmp_path / "loss.png", title="t", ylabel="loss", logy=True)
    assert read_png(path).shape[0] > 300


@pytest.mark.parametrize("values,scale,label", [
    ([[0.5, 0.25], [0.4, 0.3]], ("log", {}), "norm (log scale)"),
    ([[0.5, 0.0], [0.4, 0.3]], ("symlog", {"linthresh": 0.3}), "norm (log scale; linear below 0.3, where 0 is drawn)"),
    ([[0.0, 0.0], [None, 0.0]], None, "norm"),  # nothing above 0: linear, and not called log
])
def test_plot_curves_says_its_scale_and_draws_zeros_on_a_log_scale(values, scale, label, tmp_path, monkeypatch):
    import matplotlib.axes

    calls = {}
    for method in ("set_yscale", "set_ylabel"):
        real = getattr(matplotlib.axes.Axes, method)
        monkeypatch.setattr(matplotlib.axes.Axes, method, lambda self, *a, _real=real, _name=method, **k:
                            calls.setdefault(_name, (a[0], k)) and _real(self, *a, **k))
    plot_curves([Curve(str(i), v) for i, v in enumerate(values)], tmp_path / "g.png", title="t", ylabel="norm",
                logy=True)
    assert calls.get("set_yscale") == scale and calls["set_ylabel"][0] == label


def test_plot_curves_needs_curves(tmp_path):
    with pytest.raises(ValueError, match="at least one curve"):
        plot_curves([], tmp_path / "c.png", title="t", ylabel="y")


def test_plot_map_writes_png_and_checks_dims(tmp_path):
    read_png(plot_map(np.random.default_rng(0).random((24, 24)), tmp_path / "m.png", title="m",
                      colorbar_label="v", box=5))
    with pytest.raises(ValueError, match="2-D"):
        plot_map(np.zeros(3), tmp_path / "n.png", title="n", colorbar_label="v")


def test_differences_state_what_their_intervals_leave_out_and_flag_a_best_with_diverged_seeds():
    fine = Configuration((seed_run(0, [0.1, 0.5, 0.7]), seed_run(1, [0.2, 0.6, 0.8])))
    broken = Configuration((seed_run(0, [0.1], "diverged in epoch 2"), seed_run(1, [0.2, 0.4, 0.5])))
    method, _, line, _ = differences([("broken against fine", broken, fine), ("fine against fine", fine, fine)],
                                     n_valid=2000)
    assert "not adjusted for the 2 drawn here" in method
    assert "the runs taken as independent samples" in method
    assert "measured on the same 2,000 validation images, whose own sampling error (one standard error, " \
           "√(p(1 − p)/n): 0.009 at an accuracy of 0.8) the intervals leave out" in method
    assert "picked on those same images, so an optimistic figure" in method
    assert line.endswith(", counting seeds that diverged after their best (1 of 2 seeds of the first)")
    alone = Configuration((seed_run(0, [0.1], "diverged in epoch 2"),))
    _, _, line = differences([("alone against fine", alone, Configuration((seed_run(1, [0.2, 0.5]),)))])
    assert "counting seeds" not in line  # one seed: the final's n/a says it
