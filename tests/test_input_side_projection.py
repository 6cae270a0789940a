"""Projecting a linear layer's inputs instead of its gradient: same result, cheaper, safe with other terms."""

import copy

import pytest
import torch
from torch import nn

from avalanche_gpm import GPM, memory as memory_module
from avalanche_gpm.memory import GradientProjectionMemory, gradient_matrix
from avalanche_gpm.step_recorder import StepRecorder
from tests.helpers import gaussian_tasks, quiet_evaluator


@pytest.fixture(autouse=True)
def _take_over_small_layers(monkeypatch):
    # These layers are small: without this, the fixed cost of a takeover would keep them on the gradient path.
    monkeypatch.setattr(memory_module, "TAKEOVER_COST_FLOPS", 0)


def filled_memory(model: nn.Sequential, sgp_alpha=None) -> GradientProjectionMemory:
    """A memory over the model's linear layers, built from random old inputs."""
    layers = {"0": model[0], "4": model[4]}
    memory = GradientProjectionMemory({"0": 61, "4": 41}, sgp_alpha=sgp_alpha)  # bias inputs included
    grams = {}
    for name, dim in (("0", 61), ("4", 41)):
        r = torch.randn(dim, 25, dtype=torch.float64)
        grams[name] = r @ r.T
    memory.update(grams, {"0": 0.9, "4": 0.9})
    return memory, layers


def recorder_for(memory: GradientProjectionMemory, layers: dict) -> StepRecorder:
    return StepRecorder(layers, lambda name, rows: memory.projects_inputs(name, rows, layers[name].weight.shape[0]))


def one_step(model, x, y, extra_penalty: float = 0.0):
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y) + extra_penalty * model[0].weight.pow(2).sum()
    loss.backward()


@pytest.mark.parametrize("sgp_alpha", [None, 10.0])
def test_input_side_projection_equals_gradient_projection(sgp_alpha):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(60, 300), nn.ReLU(), nn.Linear(300, 40), nn.ReLU(), nn.Linear(40, 3))
    x, y = torch.randn(4, 60), torch.randint(0, 3, (4,))
    memory, layers = filled_memory(model, sgp_alpha)

    one_step(model, x, y)
    expected = {}
    for name, layer in layers.items():
        expected[name] = memory._projector(name, layer)(gradient_matrix(layer)).clone()

    recorder = recorder_for(memory, layers)
    recorder.start_step()
    one_step(model, x, y)
    memory.project_gradients(layers, recorder.records)
    recorder.remove()
    assert memory.last_paths["0"] == "inputs"  # 4 rows vs 300 outputs: inputs are cheaper
    for name, layer in layers.items():
        assert torch.allclose(gradient_matrix(layer), expected[name], atol=1e-6), name


def test_other_loss_terms_on_the_weights_are_projected_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(60, 300), nn.ReLU(), nn.Linear(300, 40), nn.ReLU(), nn.Linear(40, 3))
    x, y = torch.randn(4, 60), torch.randint(0, 3, (4,))
    memory, layers = filled_memory(model)
    one_step(model, x, y, extra_penalty=0.1)  # e.g. a regulariser: the gradient is not delta^T X
    expected = memory._projector("0", model[0])(gradient_matrix(model[0])).clone()
    recorder = recorder_for(memory, layers)
    recorder.start_step()
    one_step(model, x, y, extra_penalty=0.1)
    assert model[0].weight.grad is not None  # the penalty's part, left by autograd
    memory.project_gradients(layers, recorder.records)
    assert memory.last_paths["0"] == "inputs"
    assert torch.allclose(gradient_matrix(model[0]), expected, atol=1e-6)


def test_a_layer_used_twice_in_a_step_pairs_inputs_with_their_gradients():
    torch.manual_seed(0)
    shared = nn.Linear(30, 200)
    memory = GradientProjectionMemory({"shared": 31})
    r = torch.randn(31, 10, dtype=torch.float64)
    memory.update({"shared": r @ r.T}, {"shared": 0.95})
    a, b = torch.randn(2, 30), torch.randn(3, 30)
    (shared(a).sum() + 3 * shared(b).pow(2).sum()).backward()
    expected = memory._projector("shared", shared)(gradient_matrix(shared)).clone()
    shared.zero_grad()
    recorder = recorder_for(memory, {"shared": shared})
    recorder.start_step()
    (shared(a).sum() + 3 * shared(b).pow(2).sum()).backward()
    memory.project_gradients({"shared": shared}, recorder.records)
    assert memory.last_paths["shared"] == "inputs"
    assert torch.allclose(gradient_matrix(shared), expected, atol=1e-5)


def test_gpm_training_uses_input_side_projection_and_gives_layers_their_forward_back():
    benchmark = gaussian_tasks(2, (40,))
    model = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 3))
    strategy = GPM(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), threshold=0.95,
                   num_samples=60, train_mb_size=4, evaluator=quiet_evaluator())
    strategy.train(benchmark.train_stream[0])
    strategy.train(benchmark.train_stream[1])
    assert strategy.gpm.memory.last_paths["0"] == "inputs"
    assert "forward" not in vars(model[0]) and strategy.gpm._steps is None


def test_passes_outside_a_training_step_are_not_recorded():
    layer = nn.Linear(4, 8)
    recorder = StepRecorder({"fc": layer}, lambda name, rows: True)
    layer(torch.randn(3, 4)).sum().backward()  # e.g. another plugin's importance pass
    assert recorder.records["fc"].inputs == [] and layer.weight.grad is not None
    layer.zero_grad(set_to_none=True)
    recorder.start_step()
    layer(torch.randn(3, 4)).sum().backward()
    delta, inputs = recorder.records["fc"].pairs()
    assert inputs.shape == (3, 5) and delta.shape == (3, 8)
    assert layer.weight.grad is None  # taken over: autograd did not compute it
    recorder.finish_step()
    assert recorder.records["fc"].inputs == [] and not recorder.armed


def test_first_layer_on_data_with_an_in_place_activation_after_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 50, bias=False), nn.ReLU(inplace=True), nn.Linear(50, 3, bias=False))
    x, y = torch.randn(4, 20), torch.randint(0, 3, (4,))  # the data does not require grad
    memory = GradientProjectionMemory({"0": 20})
    r = torch.randn(20, 6, dtype=torch.float64)
    memory.update({"0": r @ r.T}, {"0": 0.9})
    layers = {"0": model[0]}
    one_step(model, x, y)
    expected = memory._projector("0", model[0])(gradient_matrix(model[0])).clone()
    model.zero_grad(set_to_none=True)
    recorder = recorder_for(memory, layers)
    recorder.start_step()
    one_step(model, x, y)
    memory.project_gradients(layers, recorder.records)
    assert memory.last_paths["0"] == "inputs"
    assert torch.allclose(model[0].weight.grad, expected, atol=1e-6)


def test_calls_with_more_rows_than_outputs_stay_with_autograd():
    layer = nn.Linear(10, 4)
    memory = GradientProjectionMemory({"fc": 11})
    r = torch.randn(11, 5, dtype=torch.float64)
    memory.update({"fc": r @ r.T}, {"fc": 0.9})
    recorder = recorder_for(memory, {"fc": layer})
    recorder.start_step()
    layer(torch.randn(6, 10)).sum().backward()  # 6 rows > 4 outputs: projecting the gradient is cheaper
    assert recorder.records["fc"].inputs == [] and layer.weight.grad is not None
    memory.project_gradients({"fc": layer}, recorder.records)
    assert memory.last_paths["fc"] == "gradient"


def test_small_savings_stay_on_the_gradient_path(monkeypatch):
    memory = GradientProjectionMemory({"fc": 100})
    r = torch.randn(100, 30, dtype=torch.float64)
    memory.update({"fc": r @ r.T}, {"fc": 0.9})
    monkeypatch.setattr(memory_module, "TAKEOVER_COST_FLOPS", 2e6)
    assert not memory.projects_inputs("fc", 10, 100)  # 100 x 100 layer: saves well under 2 MFLOP
    assert memory.projects_inputs("fc", 10, 2000)  # 2000 outputs: saves far more


def test_a_call_that_raises_leaves_the_parameters_trainable():
    layer = nn.Linear(4, 8)
    recorder = StepRecorder({"fc": layer}, lambda name, rows: True)
    recorder.start_step()
    with pytest.raises(RuntimeError):
        layer(torch.randn(3, 5))  # wrong input width
    recorder.finish_step()
    assert layer.weight.requires_grad and layer.bias.requires_grad


def test_sgp_prices_a_takeover_with_the_forms_it_can_use(monkeypatch):
    # Near-full rank: GPM projects through the thin complement, which SGP's scaled projection cannot use.
    r = torch.randn(100, 400, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gpm, sgp = GradientProjectionMemory({"fc": 100}), GradientProjectionMemory({"fc": 100}, sgp_alpha=10.0)
    for memory in (gpm, sgp):
        memory.update({"fc": r @ r.T}, {"fc": 0.9999})
    assert gpm.bases["fc"].shape[1] >= 95
    monkeypatch.setattr(memory_module, "TAKEOVER_COST_FLOPS", 1e5)
    assert not gpm.projects_inputs("fc", 10, 100), "the complement form is too cheap to be worth a takeover"
    assert sgp.projects_inputs("fc", 10, 100), "SGP's dense form costs enough to take the call over"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_layers_are_projected_in_float32(dtype):
    # In half precision I - M M^T is no projection: only the final rounding of .grad may leak.
    layer = nn.Linear(64, 32, bias=False).to(dtype)
    memory = GradientProjectionMemory({"fc": 64})
    r = torch.randn(64, 20, dtype=torch.float64)
    memory.update({"fc": r @ r.T}, {"fc": 0.99})
    basis = memory.bases["fc"]
    layer.weight.grad = torch.randn(32, 64).to(dtype)
    exact = layer.weight.grad.double() @ (torch.eye(64, dtype=torch.float64) - basis @ basis.T)
    memory.project_gradients({"fc": layer})
    assert layer.weight.grad.dtype == dtype

    def leak(gradient: torch.Tensor) -> float:
        return ((gradient.double() @ basis).norm() / gradient.double().norm()).item()

    assert leak(layer.weight.grad) <= 1.1 * leak(exact.to(dtype))


def test_a_deep_copy_of_a_watched_model_computes_with_its_own_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    recorder = StepRecorder({"0": model[0]}, lambda name, rows: True)
    teacher = copy.deepcopy(model)  # e.g. kept by a distillation plugin
    with torch.no_grad():
        teacher[0].weight.mul_(-2)
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    plain.load_state_dict(teacher.state_dict())
    x = torch.randn(3, 6)
    recorder.start_step()
    assert torch.equal(teacher(x), plain(x))
    assert recorder.records["0"].inputs == []  # the copy's calls are not the watched model's
    recorder.remove()


def test_remove_restores_a_forward_replaced_before():
    layer = nn.Linear(4, 3)
    calls = []
    original = layer.forward

    def traced(x):
        calls.append(x.shape)
        return original(x)

    layer.forward = traced
    recorder = StepRecorder({"fc": layer}, lambda name, rows: False)
    layer(torch.randn(2, 4))
    recorder.remove()
    assert layer.forward is traced and calls == [(2, 4)]


def test_takeover_under_bfloat16_autocast_matches_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(60, 300), nn.ReLU(), nn.Linear(300, 40), nn.ReLU(), nn.Linear(40, 3))
    x, y = torch.randn(4, 60), torch.randint(0, 3, (4,))
    memory, layers = filled_memory(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        one_step(model, x, y)
    expected = {name: memory._projector(name, layer)(gradient_matrix(layer)).clone() for name, layer in layers.items()}
    recorder = recorder_for(memory, layers)
    recorder.start_step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        one_step(model, x, y)
    memory.project_gradients(layers, recorder.records)
    recorder.remove()
    assert memory.last_paths["0"] == "inputs"
    for name, layer in layers.items():
        assert layer.weight.grad.dtype == torch.float32
        # autograd rounds delta^T X to bfloat16 before the projection; the takeover projects in float32
        assert torch.allclose(gradient_matrix(layer), expected[name], rtol=2e-2, atol=2e-3), name
