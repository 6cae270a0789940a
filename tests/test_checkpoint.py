"""Avalanche checkpoints with the optimizer: avalanche_gpm.checkpoint."""

from __future__ import annotations

import copy

import dill
import pytest
import torch
from avalanche.training import Naive
from avalanche.training.determinism.rng_manager import RNGManager
from torch import nn

from avalanche_gpm import GPM
from avalanche_gpm.checkpoint import maybe_load_checkpoint, register_optimizer_pickling, save_checkpoint
from tests.helpers import accuracy_row, gaussian_tasks, quiet_evaluator

OPTIMIZERS = {
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0),
}


def _strategy(kind: str, optimizer: str, model: nn.Module):
    cls = GPM if kind == "gpm" else Naive
    extra = {"threshold": 0.95, "num_samples": 30} if kind == "gpm" else {}
    return cls(model=model, optimizer=OPTIMIZERS[optimizer](model.parameters()), train_mb_size=8, train_epochs=2,
               evaluator=quiet_evaluator(), **extra)


def _train(strategy, experiences, test_stream) -> list[list[float]]:
    rows = []
    for experience in experiences:
        strategy.train(experience)
        rows.append(accuracy_row(strategy.eval(test_stream), len(test_stream), test_stream.name))
    return rows


@pytest.mark.filterwarnings("ignore:GPM's guarantee holds for SGD")
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["naive", "gpm"])
def test_a_resumed_run_with_its_optimizer_state_equals_the_uninterrupted_run(tmp_path, kind, optimizer):
    benchmark = gaussian_tasks(3, (10,), seed=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    RNGManager.set_random_seeds(0)
    reference = _strategy(kind, optimizer, copy.deepcopy(model))
    expected = _train(reference, benchmark.train_stream, benchmark.test_stream)

    RNGManager.set_random_seeds(0)
    first = _strategy(kind, optimizer, copy.deepcopy(model))
    rows = _train(first, benchmark.train_stream[:2], benchmark.test_stream)
    path = tmp_path / "checkpoint.pkl"
    save_checkpoint(first, path)
    saved_state = copy.deepcopy(first.optimizer.state_dict()["state"])
    del first
    torch.manual_seed(123)  # the checkpoint brings back the random state of the interrupted run

    restarted, next_exp = maybe_load_checkpoint(_strategy(kind, optimizer, nn.Sequential(
        nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))), path)
    assert next_exp == 2
    state = restarted.optimizer.state_dict()["state"]
    assert saved_state and state.keys() == saved_state.keys()
    for index, entry in saved_state.items():  # momentum buffers / Adam moments came back
        for key, value in entry.items():
            assert torch.equal(state[index][key], value), (index, key)
    # The optimizer steps the loaded model's parameters, not copies of them.
    assert restarted.optimizer.param_groups[0]["params"][0] is next(restarted.model.parameters())
    rows += _train(restarted, benchmark.train_stream[2:], benchmark.test_stream)
    assert rows == expected
    for (name, param), reference_param in zip(restarted.model.named_parameters(), reference.model.parameters()):
        assert torch.equal(param, reference_param), name


def test_avalanche_alone_still_fails_on_torch_optimizers(tmp_path):
    # Documents why avalanche_gpm.checkpoint exists: if this starts passing, the README's
    # checkpoint note and the module can go. A fresh process, since our reducers are registered
    # in this one once any test above has run.
    import subprocess
    import sys

    code = (
        "import torch, sys\n"
        "from torch import nn\n"
        "from avalanche.checkpointing import save_checkpoint\n"
        "from avalanche.training import Naive\n"
        "m = nn.Linear(2, 2)\n"
        "s = Naive(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1))\n"
        "try:\n"
        "    save_checkpoint(s, sys.argv[1])\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.pkl")], capture_output=True, text=True,
                          timeout=120)
    assert "PicklingError" in done.stdout, done.stdout + done.stderr


class UserSGD(torch.optim.SGD):
    """A user's optimizer subclass (by value, dill would pickle its torch base class by value too)."""


def test_a_users_optimizer_subclass_round_trips_with_its_state():
    register_optimizer_pickling()
    param = nn.Parameter(torch.ones(2))
    optimizer = UserSGD([param], lr=0.1, momentum=0.5)
    param.grad = torch.ones(2)
    optimizer.step()
    loaded = dill.loads(dill.dumps({"param": param, "optimizer": optimizer}))
    assert type(loaded["optimizer"]) is UserSGD
    assert loaded["optimizer"].param_groups[0]["params"][0] is loaded["param"]
    assert torch.equal(loaded["optimizer"].state[loaded["param"]]["momentum_buffer"], torch.ones(2))
