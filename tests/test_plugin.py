"""GPMPlugin inside Avalanche: the invariance promise, BatchNorm freezing, state, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from avalanche.training import Naive
from torch import nn

from avalanche_gpm import GPM, GPMPlugin, LinearSchedule
from avalanche_gpm.checkpoint import maybe_load_checkpoint, save_checkpoint
from tests.helpers import accuracy_row, experience_inputs, gaussian_tasks, quiet_evaluator


def layer_inputs(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs each layer receives when ``model`` runs on ``x`` in eval mode."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        layer.register_forward_pre_hook(lambda _, args, name=name: seen.__setitem__(name, args[0].detach().clone()))
        for name, layer in layers.items()
    ]
    model.eval()
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


def relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


def gpm_strategy(model: nn.Module, **kwargs) -> GPM:
    kwargs = {"train_mb_size": 8, "train_epochs": 3, "evaluator": quiet_evaluator(), **kwargs}
    return GPM(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def check_invariance(model: nn.Module, benchmark, num_samples: int, frozen: nn.Module | None = None) -> GPM:
    """Train two experiences; the first one's layer outputs must not move on its captured inputs,
    and the parameters of ``frozen`` must not move at all."""
    strategy = gpm_strategy(model, threshold=1.0, num_samples=num_samples)
    first = benchmark.train_stream[0]
    strategy.train(first)
    frozen_before = copy.deepcopy(frozen.state_dict()) if frozen is not None else {}
    # The plugin captured the whole first experience (num_samples >= its size), in one batch.
    x_old = experience_inputs(first)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    inputs = layer_inputs(model, layers, x_old)
    outputs_before = {name: layers[name](inputs[name]).detach() for name in layers}
    weights_before = copy.deepcopy(model.state_dict())

    strategy.train(benchmark.train_stream[1])
    for name, layer in layers.items():
        change = relative_change(outputs_before[name], layer(inputs[name]).detach())
        assert change < 1e-4, f"layer {name} output on old inputs moved by {change:.2e}"
        assert not torch.equal(weights_before[f"{name}.weight"], layer.weight), f"layer {name} did not learn"
    for key, value in frozen_before.items():
        assert torch.equal(value, frozen.state_dict()[key]), f"{key} changed after the first experience"
    return strategy


def test_mlp_outputs_on_old_inputs_are_preserved():
    benchmark = gaussian_tasks(2, (24,), train_size=16)
    model = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 3))
    check_invariance(model, benchmark, num_samples=16)


def test_conv_net_outputs_on_old_inputs_are_preserved_and_bn_is_frozen():
    benchmark = gaussian_tasks(2, (3, 5, 5), train_size=2)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),  # 9 patches per sample in a 27-dim input space
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.Conv2d(4, 6, 2, bias=False),  # 4 patches per sample in 16 dims
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(24, 3),
    )
    strategy = check_invariance(model, benchmark, num_samples=2, frozen=model[1])
    assert strategy.gpm.experiences_learned == 2


def test_without_gpm_the_same_training_moves_old_outputs():
    """Control for the invariance tests: the benchmark does cause interference."""
    benchmark = gaussian_tasks(2, (24,), train_size=16)
    model = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 3))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
                     train_epochs=3, evaluator=quiet_evaluator())
    strategy.train(benchmark.train_stream[0])
    x_old = experience_inputs(benchmark.train_stream[0])
    before = model(x_old).detach()
    strategy.train(benchmark.train_stream[1])
    assert relative_change(before, model(x_old).detach()) > 1e-2


def test_memory_usage_is_reported_to_avalanche_and_grows():
    benchmark = gaussian_tasks(3, (12,))
    model = nn.Sequential(nn.Linear(12, 16, bias=False), nn.ReLU(), nn.Linear(16, 3, bias=False))
    strategy = gpm_strategy(model, threshold=[0.9, 0.95], num_samples=40)
    sizes = []
    for experience in benchmark.train_stream:
        strategy.train(experience)
        metrics = strategy.evaluator.get_last_metrics()
        sizes.append(metrics["GPM/basis_size/0"])
        assert metrics["GPM/memory_fraction/2"] == strategy.gpm.usage_history[-1]["2"]["basis_size"] / 16
    assert 0 < sizes[0] <= sizes[1] <= sizes[2] <= 12
    assert len(strategy.gpm.usage_history) == 3


def test_schedule_thresholds_are_resolved_per_task():
    assert LinearSchedule(0.97, 0.003)(9) == pytest.approx(0.997)
    benchmark = gaussian_tasks(2, (12,))
    model = nn.Sequential(nn.Linear(12, 3, bias=False))
    strategy = gpm_strategy(model, threshold=LinearSchedule(0.5, 0.6), num_samples=40)
    strategy.train(benchmark.train_stream[0])
    with pytest.raises(ValueError, match=r"threshold of the schedule at task 1 is 1.1"):
        strategy.train(benchmark.train_stream[1])


def train_and_eval(strategy, experiences, test_stream, num_tasks):
    rows = []
    for i, experience in enumerate(experiences):
        torch.manual_seed(100 + experience.current_experience)
        strategy.train(experience)
        rows.append(accuracy_row(strategy.eval(test_stream), num_tasks))
    return rows


def conv_model():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
    )


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path):
    benchmark = gaussian_tasks(3, (1, 6, 6))
    torch.manual_seed(1)
    reference_model = conv_model()
    resumed_model = copy.deepcopy(reference_model)

    reference = gpm_strategy(reference_model, threshold=0.95, num_samples=30)
    reference_rows = train_and_eval(reference, benchmark.train_stream, benchmark.test_stream, 3)

    first = gpm_strategy(resumed_model, threshold=0.95, num_samples=30)
    rows = train_and_eval(first, benchmark.train_stream[:2], benchmark.test_stream, 3)
    path = tmp_path / "checkpoint.pkl"
    save_checkpoint(first, path)
    del first

    fresh_model = conv_model()
    restarted = gpm_strategy(fresh_model, threshold=0.95, num_samples=30)
    restarted, next_exp = maybe_load_checkpoint(restarted, path)
    assert next_exp == 2 and restarted.gpm.experiences_learned == 2
    rows += train_and_eval(restarted, benchmark.train_stream[next_exp:], benchmark.test_stream, 3)

    assert rows == reference_rows
    for name, basis in reference.gpm.memory.bases.items():
        assert torch.equal(basis, restarted.gpm.memory.bases[name])


def test_state_dict_round_trip_restores_bases_and_counters():
    benchmark = gaussian_tasks(2, (12,))
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    strategy = gpm_strategy(model, threshold=0.9, num_samples=40)
    strategy.train(benchmark.train_stream[0])
    state = strategy.gpm.state_dict()

    plugin = GPMPlugin(0.9)
    plugin.load_state_dict(state)
    assert plugin.experiences_learned == 1
    assert plugin.usage_history == strategy.gpm.usage_history
    for name, basis in strategy.gpm.memory.bases.items():
        assert torch.equal(plugin.memory.bases[name], basis)

    other = nn.Sequential(nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
    resumed = GPM(model=other, optimizer=torch.optim.SGD(other.parameters(), lr=0.1), evaluator=quiet_evaluator())
    resumed.gpm.load_state_dict(state)
    with pytest.raises(ValueError, match="GPM memory was built for layers"):
        resumed.train(benchmark.train_stream[1])


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.01, float("nan"), "0.9", [0.9, 1.2], True, [0.9, True]])
def test_threshold_outside_unit_interval_is_rejected(threshold):
    with pytest.raises(ValueError, match="must be a number in \\(0, 1\\]"):
        GPMPlugin(threshold)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": [0.9, 0.95, 0.99]}, "threshold has 3 values but 2 layers"),
        ({"threshold": {"0": 0.9, "fc2": 0.9}}, r"threshold mapping must name every protected layer.*\['fc2'\]"),
        ({"num_samples": [10]}, "num_samples has 1 values but 2 layers"),
    ],
)
def test_per_layer_settings_that_do_not_fit_the_model_fail_before_training(options, message):
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        train_one(model, **options)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items()), "nothing trained"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"projection_form": "bogus"}, r"GPM's projection_form must be None .* got 'bogus'"),
        ({"projection_form": "complement", "sgp_alpha": 10.0}, r"SGP's projection_form must be None .*\('dense', 'basis'\)"),
        ({"capture_batch_size": -1}, "capture_batch_size is -1; it must be a positive integer"),
        ({"capture_batch_size": 2.5}, "capture_batch_size is 2.5"),
    ],
)
def test_options_that_would_fail_after_the_first_experience_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        GPMPlugin(**options)


def test_more_capture_samples_than_the_experience_has_warn():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.warns(UserWarning, match="asks for 500 samples but experience 0 has 60: its representation uses all"):
        train_one(model, num_samples=500)


def train_one(model, optimizer=None, **kwargs):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    strategy = GPM(model=model, optimizer=optimizer, train_mb_size=10, evaluator=quiet_evaluator(), **kwargs)
    strategy.train(gaussian_tasks(1, (4,)).train_stream[0])


def test_model_with_nothing_to_protect_is_rejected():
    with pytest.raises(ValueError, match="found nothing to protect"):
        train_one(nn.Sequential(nn.Flatten(), nn.PReLU()))


def test_unknown_module_name_is_rejected():
    with pytest.raises(ValueError, match=r"no module named \['fc9'\]"):
        train_one(nn.Sequential(nn.Linear(4, 3)), modules=["fc9"])


def test_unsupported_module_in_modules_is_rejected():
    with pytest.raises(ValueError, match="only nn.Linear and nn.Conv2d"):
        train_one(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), modules=["1"])


def test_grouped_convolution_needs_an_explicit_choice():
    model = nn.Sequential(nn.Unflatten(1, (4, 1, 1)), nn.Conv2d(4, 4, 1, groups=2), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="grouped convolution '1'.*exclude=\\['1'\\]"):
        train_one(model)
    train_one(model, exclude=["1"])  # an explicit exclusion is respected, without a warning


def test_weight_decay_is_rejected():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="weight_decay=0.01"):
        train_one(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.01))


def test_adaptive_optimizer_and_running_stats_warn():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    with pytest.warns(UserWarning) as records:
        train_one(model, optimizer=torch.optim.Adam(model.parameters()))
    messages = " ".join(str(r.message) for r in records)
    assert "Adam rescales" in messages and "track running statistics" in messages


def test_running_statistics_without_affine_parameters_warn_too():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, affine=False), nn.Linear(6, 3))
    with pytest.warns(UserWarning, match=r"normalisation layers \['1'\] track running statistics"):
        train_one(model)


@pytest.mark.parametrize("builder", ["alexnet", "resnet"])
def test_paper_models_train_with_gpm_over_two_tasks(builder):
    """The paper's multi-head networks: every shared layer gets a basis, heads and BN behave."""
    from avalanche_gpm.models import alexnet, reduced_resnet18

    model = alexnet(classes_per_task=3) if builder == "alexnet" else reduced_resnet18(classes_per_task=3)
    benchmark = gaussian_tasks(2, (3, 32, 32), train_size=24, test_size=8, task_labels=True)
    strategy = gpm_strategy(model, threshold=0.9, num_samples=4, train_epochs=1)
    strategy.train(benchmark.train_stream[0])
    bn_after_first = {k: v.clone() for k, v in model.state_dict().items() if ".bn" in k or k.startswith("bn")}
    assert bn_after_first
    strategy.train(benchmark.train_stream[1])
    usage = strategy.gpm.usage_history[-1]
    assert len(usage) == (5 if builder == "alexnet" else 20)
    assert all(0 < u["basis_size"] <= u["input_dim"] for u in usage.values())
    assert not any(name.startswith("classifier") for name in usage)
    for key, value in bn_after_first.items():
        assert torch.equal(value, model.state_dict()[key]), f"{key} changed after the first task"
