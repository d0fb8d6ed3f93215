"""The disruption model on a small synthetic training set: encoding, training, determinism and the time split."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import training as M_training
from pipelines.training.columns import CATEGORICAL_COLUMNS, categorical_values
from pipelines.training.fit import (
    DEFAULT_PARAMS,
    WeightAverage,
    fit_platt,
    sliced_batches,
    time_split,
    train_epoch,
    train_model,
    training_parts,
)
from pipelines.training.model import TrainedModel
from pipelines.training.network import (
    CPU_THREADS,
    EMBEDDING_DIM,
    Dropout,
    FlightDelayEnsemble,
    FlightDelayNet,
    _lookup,
    pick_device,
)
from pipelines.training.preprocessing import UNKNOWN_INDEX, Preprocessor

FAST = {"hidden_sizes": [32, 16], "dropout": 0.0, "lr": 3e-3, "batch_size": 256}


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney rank formula of ROC AUC."""
    ranks = pd.Series(scores).rank().to_numpy()
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _log_loss(labels: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


@pytest.fixture(scope="module")
def splits(make_training_frame: Callable[..., pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return time_split(make_training_frame(), valid_days=5, test_days=5)


@pytest.fixture(scope="module")
def trained(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> TrainedModel:
    train, valid, _ = splits
    return train_model(train, valid, FAST, seed=0, max_epochs=15, patience=4, device=torch.device("cpu"))


def test_preprocessor_round_trips_through_json(make_training_frame: Callable[..., pd.DataFrame]) -> None:
    frame = make_training_frame(400)
    fitted = Preprocessor().fit(frame)
    restored = Preprocessor.from_dict(json.loads(json.dumps(fitted.to_dict())))
    cat_a, num_a = fitted.transform(frame)
    cat_b, num_b = restored.transform(frame)
    assert cat_a.dtype == torch.int64 and num_a.dtype == torch.float32
    assert cat_a.shape == (400, len(CATEGORICAL_COLUMNS))
    assert torch.equal(cat_a, cat_b) and torch.equal(num_a, num_b)
    assert "wind_gust" in fitted.missing_indicators and torch.isfinite(num_a).all()
    assert "flight_id" not in fitted.categorical + fitted.numeric


def test_dest_comes_from_route_and_unknowns_map_to_zero(make_training_frame: Callable[..., pd.DataFrame]) -> None:
    frame = make_training_frame(400)
    pre = Preprocessor().fit(frame)
    assert pre.vocabularies["dest"] == ["ATL", "LAX", "MIA", "ORD"]
    odd = frame.head(3).copy()
    odd["carrier"] = ["ZZ", None, "AA"]
    odd["route"] = ["JFK-XXX", "JFK-LAX", None]
    odd["plane_type"] = None
    odd["temp"] = np.nan
    odd = odd.drop(columns=["visib"])
    cat, num = pre.transform(odd)
    col = {c: j for j, c in enumerate(pre.categorical)}
    assert cat[:, col["carrier"]].tolist()[:2] == [0, 0] and cat[2, col["carrier"]] > 0
    assert cat[0, col["dest"]] == 0 and cat[1, col["dest"]] > 0 and cat[2, col["dest"]] == 0
    assert cat[:, col["plane_type"]].tolist() == [0, 0, 0]
    assert torch.isfinite(num).all()


def test_training_improves_and_beats_base_rate(trained: TrainedModel,
                                               splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    train, valid, test = splits
    losses = [h["valid_log_loss"] for h in trained.history]
    assert min(losses) < losses[0]
    p = trained.predict_proba(test)
    assert p.shape == (len(test),) and np.all((p >= 0) & (p <= 1))
    y = test["disrupted"].to_numpy()
    assert _auc(y, p) > 0.7  # the base rate (a constant) has AUC 0.5
    assert len(trained.history) <= 15 and 0 <= trained.best_epoch < len(trained.history)


def test_same_seed_same_predictions(trained: TrainedModel,
                                    splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    train, valid, test = splits
    again = train_model(train, valid, FAST, seed=0, max_epochs=15, patience=4, device=torch.device("cpu"))
    np.testing.assert_array_equal(trained.predict_proba(test), again.predict_proba(test))


def test_predictions_ignore_flight_id(trained: TrainedModel,
                                      splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    test = splits[2]
    other = test.copy()
    other["flight_id"] = np.random.default_rng(1).permutation(other["flight_id"].to_numpy())
    replaced = test.assign(flight_id="2099-01-01:XX9999:ZZZ")
    base = trained.predict_proba(test)
    np.testing.assert_array_equal(base, trained.predict_proba(other))
    np.testing.assert_array_equal(base, trained.predict_proba(replaced))


def test_time_split_is_disjoint_and_ordered(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    train, valid, test = splits
    assert len(train) + len(valid) + len(test) == 3000
    ids = [set(part["flight_id"]) for part in splits]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    dates = [part["scheduled_departure"].dt.tz_convert("America/New_York").dt.normalize() for part in splits]
    assert dates[0].max() < dates[1].min() and dates[1].max() < dates[2].min()
    assert dates[1].nunique() == 5 and dates[2].nunique() == 5
    with pytest.raises(ValueError):
        time_split(train.head(10), valid_days=20, test_days=20)


def test_on_epoch_called_once_per_epoch(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    train, valid, _ = splits
    calls: list[tuple[int, float]] = []
    result = train_model(train, valid, FAST, seed=3, max_epochs=4, patience=10,
                           on_epoch=lambda epoch, metric: calls.append((epoch, metric)))
    assert [epoch for epoch, _ in calls] == [0, 1, 2, 3] == list(range(len(result.history)))
    assert all(np.isfinite(metric) for _, metric in calls)
    assert [m for _, m in calls] == [h["valid_log_loss"] for h in result.history]


def test_training_on_the_cpu_uses_one_thread_and_gives_the_process_its_setting_back(
        splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    train, valid, _ = splits
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        during: list[int] = []
        train_model(train, valid, FAST, seed=0, max_epochs=2, device=torch.device("cpu"),
                    on_epoch=lambda epoch, metric: during.append(torch.get_num_threads()))
        assert during == [CPU_THREADS, CPU_THREADS] and CPU_THREADS == 1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_validation_log_loss_is_unweighted(trained: TrainedModel,
                                           splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    valid = splits[1]
    best = trained.history[trained.best_epoch]["valid_log_loss"]
    assert _log_loss(valid["disrupted"].to_numpy(), trained.predict_proba(valid)) == pytest.approx(best, rel=1e-4)


def test_pick_device_is_cpu_without_gpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected


def test_calibration_makes_the_mean_prediction_the_observed_rate(
        trained: TrainedModel, splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    """pos_weight shifts the raw logits; the Platt scaling fitted on validation shifts them back."""
    valid = splits[1]
    y = valid["disrupted"].to_numpy()
    raw = torch.sigmoid(trained.predict_logits(valid)).numpy()
    calibrated = trained.predict_proba(valid)
    assert trained.calibration != (1.0, 0.0)
    assert abs(calibrated.mean() - y.mean()) < 0.02
    assert _log_loss(y, calibrated) <= _log_loss(y, raw)
    best = trained.history[trained.best_epoch]
    assert best["valid_log_loss"] <= best["valid_log_loss_uncalibrated"]


def test_fit_platt_recovers_a_known_scaling() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, generator=generator) * 2
    y = (torch.rand(20000, generator=generator) < torch.sigmoid(0.5 * logits - 1.0)).float()
    a, b = fit_platt(logits, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.05)


def test_model_round_trips_through_bytes(trained: TrainedModel,
                                         splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    restored = TrainedModel.from_bytes(trained.to_bytes())
    test = splits[2]
    np.testing.assert_array_equal(trained.predict_proba(test), restored.predict_proba(test))
    assert restored.calibration == trained.calibration and restored.params == trained.params
    assert restored.preprocessor.to_dict() == trained.preprocessor.to_dict()


def test_imbalance_power_sets_the_class_weight(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    """Weighting positives up raises the raw (uncalibrated) predictions; calibration brings both back."""
    train, valid, _ = splits
    raw_mean = {}
    for power in (0.0, 1.0):
        model = train_model(train, valid, FAST | {"imbalance_power": power}, seed=0, max_epochs=3, patience=3)
        raw_mean[power] = float(torch.sigmoid(model.predict_logits(valid)).mean())
        assert abs(model.predict_proba(valid).mean() - valid["disrupted"].mean()) < 0.03
    assert raw_mean[1.0] > raw_mean[0.0] + 0.05


def test_dataloader_path_trains_the_same_model_as_slices(splits: tuple[pd.DataFrame, pd.DataFrame,
                                                                       pd.DataFrame]) -> None:
    """The bench's comparison is fair: same loop, same batches in the same order, so the same weights."""
    train = splits[0]
    pre = Preprocessor().fit(train)
    cat, num = pre.transform(train)
    y = torch.as_tensor(train["disrupted"].to_numpy(), dtype=torch.float32)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    states = []
    for batches in (sliced_batches, M_training.loader_batches):
        torch.manual_seed(0)
        net, optimizer, criterion = training_parts(pre, train, DEFAULT_PARAMS | FAST, torch.device("cpu"))
        torch.manual_seed(1)  # the dropout masks
        loss = train_epoch(net, optimizer, criterion, batches(cat, num, y, order, 256))
        states.append((loss, net.state_dict()))
    assert states[0][0] == pytest.approx(states[1][0], rel=1e-6)
    for name, value in states[0][1].items():
        torch.testing.assert_close(value, states[1][1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_numeric_inputs_are_clipped_to_the_training_range(make_training_frame: Callable[..., pd.DataFrame]) -> None:
    frame = make_training_frame(400)
    pre = Preprocessor().fit(frame)
    column = pre.numeric.index("wind_speed")
    glitch = frame.head(2).assign(wind_speed=[1048.0, -5.0])
    bounds = frame.head(2).assign(wind_speed=[frame["wind_speed"].max(), frame["wind_speed"].min()])
    assert torch.equal(pre.transform(glitch)[1][:, column], pre.transform(bounds)[1][:, column])


def test_categorical_values_match_the_per_value_definition(make_training_frame: Callable[..., pd.DataFrame]) -> None:
    """The vectorized conversion (each distinct value once) gives what converting every value would."""
    frame = make_training_frame(200)
    odd = frame.head(8).copy()
    odd["carrier"] = ["ZZ", None, "AA", np.nan, pd.NA, "B6", 3, 4.0]
    odd["route"] = ["JFK-XXX", "JFK-LAX", None, "EWR", pd.NA, "LGA-ORD", "A-B-C", ""]
    odd["dep_hour"] = [7.0, np.nan, 8.5, 7, "7", None, 23.0, -0.0]
    floats = frame.assign(dep_hour=frame["dep_hour"].astype(float).where(frame.index % 7 != 0))
    for data in (frame, odd, floats, frame.iloc[::-1], frame.head(0)):
        for column in CATEGORICAL_COLUMNS:
            source = (data["route"].astype("string").str.split("-", n=1).str[1] if column == "dest"
                      else data.get(column, pd.Series([None] * len(data), index=data.index)))
            expected = [None if pd.isna(v) else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                        for v in source.astype("object")]
            got = categorical_values(data, column)
            assert got.index.equals(data.index) and got.tolist() == expected, column
    assert categorical_values(odd, "dep_hour").tolist() == ["7", None, "8.5", "7", "7", None, "23", "0"]
    assert categorical_values(odd, "dest").tolist() == ["XXX", "LAX", None, None, None, "ORD", "B-C", None]


def test_categoricals_share_one_embedding_table_per_member(trained: TrainedModel) -> None:
    net = trained.network()
    assert isinstance(net, FlightDelayEnsemble) and len(net.members) == DEFAULT_PARAMS["members"]
    cardinalities = trained.preprocessor.cardinalities
    for member in net.members:
        assert isinstance(member, FlightDelayNet)
        tables = [m for m in member.modules() if isinstance(m, torch.nn.Embedding)]
        assert len(tables) == 1 and tables[0].num_embeddings == sum(cardinalities)
        assert member.offsets.tolist() == np.concatenate([[0], np.cumsum(cardinalities)[:-1]]).tolist()
        # index 0 (unknown) of each column is its own row: the columns do not share an "unknown" vector
        assert len(set((member.offsets + UNKNOWN_INDEX).tolist())) == len(cardinalities)


def test_cpu_embedding_matches_the_stock_lookup_and_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(30, EMBEDDING_DIM, generator=generator, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 30, (257, 6), generator=generator)
    grad = torch.randn(257, 6, EMBEDDING_DIM, generator=generator, dtype=torch.float64)
    ours = _lookup(weight, index)
    (ours_grad,) = torch.autograd.grad(ours, weight, grad)
    stock = torch.nn.functional.embedding(index, weight)
    (stock_grad,) = torch.autograd.grad(stock, weight, grad)
    assert torch.equal(ours, stock)
    torch.testing.assert_close(ours_grad, stock_grad)
    assert torch.autograd.gradcheck(lambda w: _lookup(w, index[:5]), (weight,))


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
def test_dropout_keeps_the_expectation_and_the_rate(p: float) -> None:
    layer = Dropout(p)
    x = torch.ones(400, 500)
    torch.manual_seed(0)
    out = layer(x)
    torch.manual_seed(0)
    assert torch.equal(out, layer(x))  # the global generator seeds it, as it does nn.Dropout
    dropped = float((out == 0).float().mean())
    assert dropped == pytest.approx(p, abs=0.005)
    if p < 1:
        assert float(out.mean()) == pytest.approx(1.0, abs=0.01)
        kept = out[out != 0]
        assert torch.allclose(kept, torch.full_like(kept, 65536 / (65536 - round(p * 65536))))
    assert torch.equal(layer.eval()(x), x)
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_sliced_batches_cover_the_rows_in_order() -> None:
    cat = torch.arange(20).reshape(10, 2)
    num = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(10, dtype=torch.float32)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    batches = list(sliced_batches(cat, num, y, order, 4))
    assert [len(b[2]) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b[2] for b in batches]), order.float())
    assert all(torch.equal(c, cat[order[i * 4:(i + 1) * 4]]) for i, (c, _, _) in enumerate(batches))


def test_trained_model_records_its_validation_log_losses(trained: TrainedModel) -> None:
    best = trained.history[trained.best_epoch]
    assert trained.valid_log_loss == best["valid_log_loss"] == min(h["valid_log_loss"] for h in trained.history)
    assert trained.valid_log_loss <= trained.valid_log_loss_uncalibrated


def test_model_bytes_load_with_weights_only(trained: TrainedModel) -> None:
    import io

    saved = torch.load(io.BytesIO(trained.to_bytes()), weights_only=True)
    assert {"preprocessor", "params", "state_dict", "calibration", "history", "best_epoch"} <= set(saved)
    json.dumps({k: saved[k] for k in ("preprocessor", "params", "calibration", "history", "best_epoch")})


def test_bench_training_measures_both_paths(make_training_frame: Callable[..., pd.DataFrame]) -> None:
    from benchmarks.training import TARGETS, bench_training, print_training

    frame = make_training_frame()
    figures = bench_training(frame, params={"batch_size": 256}, valid_days=5, test_days=5,
                             devices=[torch.device("cpu")])
    cpu = figures["cpu"]
    assert cpu["rows"] == len(time_split(frame, valid_days=5, test_days=5)[0])
    assert cpu["batch_size"] == 256 and cpu["torch_threads"] >= 1
    assert cpu["sliced_samples_per_s"] > 0 and cpu["dataloader_samples_per_s"] > 0
    # Each figure is rounded (rates to whole samples, the speedup to a tenth): their ratio agrees within both.
    assert cpu["speedup_vs_dataloader"] == pytest.approx(
        cpu["sliced_samples_per_s"] / cpu["dataloader_samples_per_s"], abs=0.06, rel=0.005)
    assert set(figures["met"]) == {"cpu_samples_per_s", "speedup_vs_dataloader"} and figures["targets"] == TARGETS
    print_training(figures)


def test_each_member_learns_as_it_would_alone(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    """The ensemble's loss is the sum of its members' own: member 0 of two ends an epoch where one network would."""
    train = splits[0]
    pre = Preprocessor().fit(train)
    cat, num = pre.transform(train)
    y = torch.as_tensor(train["disrupted"].to_numpy(), dtype=torch.float32)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    states = {}
    for members in (1, 2):
        torch.manual_seed(0)  # the first member's initialization
        net, optimizer, criterion = training_parts(pre, train, DEFAULT_PARAMS | FAST | {"members": members},
                                                   torch.device("cpu"))
        train_epoch(net, optimizer, criterion, sliced_batches(cat, num, y, order, 256))
        states[members] = net.state_dict()
    assert isinstance(net, FlightDelayEnsemble)
    for name, value in states[1].items():
        torch.testing.assert_close(states[2][f"members.0.{name}"], value, msg=name)
    assert not torch.equal(states[2]["members.0.linear.weight"], states[2]["members.1.linear.weight"])


def test_the_model_predicts_the_mean_logit_of_its_members(trained: TrainedModel,
                                                          splits: tuple[pd.DataFrame, pd.DataFrame,
                                                                        pd.DataFrame]) -> None:
    test = splits[2]
    with torch.no_grad():
        each = trained.network().member_logits(*trained.preprocessor.transform(test))
    assert each.shape == (DEFAULT_PARAMS["members"], len(test)) and not torch.equal(each[0], each[1])
    torch.testing.assert_close(trained.predict_logits(test), each.mean(0))


def test_a_model_saved_before_ensembles_loads_as_one_network(
        splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    train, valid, test = splits
    single = train_model(train, valid, FAST | {"members": 1}, seed=0, max_epochs=2)
    old = TrainedModel.from_bytes(single.to_bytes())
    old.params = {k: v for k, v in old.params.items() if k != "members"}  # what such a model's params hold
    assert isinstance(old.network(), FlightDelayNet) and not any(k.startswith("members.") for k in old.state_dict)
    np.testing.assert_array_equal(old.predict_proba(test), single.predict_proba(test))


def test_train_model_takes_a_column_subset(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    train, valid, test = splits
    subset = Preprocessor(categorical=["carrier", "origin", "dest"],
                          numeric=[c for c in Preprocessor().numeric if c not in ("temp", "precip")])
    model = train_model(train, valid, FAST, seed=0, max_epochs=2, preprocessor=subset)
    assert model.preprocessor.categorical == ["carrier", "origin", "dest"]
    assert "precip" not in model.preprocessor.numeric
    restored = TrainedModel.from_bytes(model.to_bytes())
    other = test.assign(precip=test["precip"] + 1.0, plane_type="zz")
    np.testing.assert_array_equal(restored.predict_proba(test), restored.predict_proba(other))


def test_the_weight_average_warms_up_then_follows_the_steps_slowly() -> None:
    net = torch.nn.Linear(3, 1)
    average = WeightAverage(net, 0.99)
    start = average.net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    average.update()  # step 0: decay (1 + 0) / (10 + 0) = 0.1, so the average moves 90% of the way
    assert torch.allclose(average.net.weight, start + 0.9)
    for _ in range(2000):  # the decay rises towards 0.99, reached at step 891; the average catches up
        average.update()
    assert torch.allclose(average.net.weight, net.weight, atol=1e-6)
    before = average.net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    average.update()  # past the warm-up a step moves the average 1% of the way
    assert torch.allclose(average.net.weight, before + 0.01, atol=1e-5)
    assert average.net is not net and WeightAverage(net, 0.0).net is net


def test_validation_scores_the_averaged_weights(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    train, valid, _ = splits
    averaged = train_model(train, valid, FAST, seed=0, max_epochs=3)
    last_step = train_model(train, valid, FAST | {"ema_decay": 0.0}, seed=0, max_epochs=3)
    # The same steps (same seed): only what is validated and kept differs.
    assert [h["train_loss"] for h in averaged.history] == [h["train_loss"] for h in last_step.history]
    assert [h["valid_log_loss"] for h in averaged.history] != [h["valid_log_loss"] for h in last_step.history]
