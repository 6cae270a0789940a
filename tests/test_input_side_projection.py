"""Projecting a linear layer's inputs instead of its gradient: same result, cheaper, safe fallback."""

import pytest
import torch
from torch import nn

from avalanche_gpm import GPM
from avalanche_gpm.memory import GradientProjectionMemory, gradient_matrix
from avalanche_gpm.step_recorder import StepRecorder
from tests.helpers import gaussian_tasks, quiet_evaluator


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

    recorder = StepRecorder(layers)
    recorder.start_step()
    one_step(model, x, y)
    memory.project_gradients(layers, recorder.records)
    recorder.remove()
    assert memory.last_paths["0"] == "inputs"  # 4 rows vs 300 outputs: inputs are cheaper
    for name, layer in layers.items():
        assert torch.allclose(gradient_matrix(layer), expected[name], atol=1e-6), name


def test_other_loss_terms_on_the_weights_fall_back_to_the_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(60, 300), nn.ReLU(), nn.Linear(300, 40), nn.ReLU(), nn.Linear(40, 3))
    x, y = torch.randn(4, 60), torch.randint(0, 3, (4,))
    memory, layers = filled_memory(model)
    one_step(model, x, y, extra_penalty=0.1)  # e.g. a regulariser: the gradient is not delta^T X
    expected = memory._projector("0", model[0])(gradient_matrix(model[0])).clone()
    recorder = StepRecorder(layers)
    recorder.start_step()
    one_step(model, x, y, extra_penalty=0.1)
    memory.project_gradients(layers, recorder.records)
    assert memory.last_paths["0"] == "gradient"
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
    recorder = StepRecorder({"shared": shared})
    recorder.start_step()
    (shared(a).sum() + 3 * shared(b).pow(2).sum()).backward()
    memory.project_gradients({"shared": shared}, recorder.records)
    assert memory.last_paths["shared"] == "inputs"
    assert torch.allclose(gradient_matrix(shared), expected, atol=1e-5)


def test_gpm_training_uses_input_side_projection_and_removes_its_hooks():
    benchmark = gaussian_tasks(2, (40,))
    model = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 3))
    strategy = GPM(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), threshold=0.95,
                   num_samples=60, train_mb_size=4, evaluator=quiet_evaluator())
    strategy.train(benchmark.train_stream[0])
    strategy.train(benchmark.train_stream[1])
    assert strategy.gpm.memory.last_paths["0"] == "inputs"
    assert not model[0]._forward_hooks and strategy.gpm._steps is None


def test_passes_outside_a_training_step_are_not_recorded():
    layer = nn.Linear(4, 8)
    recorder = StepRecorder({"fc": layer})
    layer(torch.randn(3, 4)).sum().backward()  # e.g. another plugin's importance pass
    assert recorder.records["fc"].inputs == []
    recorder.start_step()
    layer(torch.randn(3, 4)).sum().backward()
    assert recorder.records["fc"].complete and recorder.records["fc"].rows == 3
    recorder.finish_step()
    assert recorder.records["fc"].inputs == [] and not recorder.armed
