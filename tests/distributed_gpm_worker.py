"""A small GPM run, launched by tests/test_distributed_gpm.py.

``torchrun --nproc_per_node=2 tests/distributed_gpm_worker.py OUT`` runs it on two ranks (gloo,
CPU); ``python tests/distributed_gpm_worker.py OUT`` runs the same thing in one process with the
same global batch. Each rank writes ``OUT/rank{r}.pt`` with what the test checks.
"""

from __future__ import annotations

import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from avalanche.models import MultiHeadClassifier  # noqa: E402
from avalanche.training import Naive  # noqa: E402
from avalanche.training.plugins import SupervisedPlugin  # noqa: E402
from avalanche_gpm import GPM  # noqa: E402
from avalanche_gpm.distributed import (  # noqa: E402
    DistributedHelper,
    check_ranks_agree,
    check_train_sharding,
    distributed_accuracy_row,
    shutdown_distributed,
    update_on_main_process,
    wrap_for_ddp,
)
from helpers import experience_inputs, gaussian_tasks, quiet_evaluator  # noqa: E402

GLOBAL_BATCH = 16
TRAIN_SIZE = 64  # a multiple of the world size and the global batch: no DistributedSampler padding
EPOCHS = 2


class SeenSamples(SupervisedPlugin, supports_distributed=True):
    """Dataset indices of the training samples this rank sees, per experience and epoch."""

    def __init__(self):
        super().__init__()
        self.epochs: list[list[int]] = []  # one list per (experience, epoch), in training order
        self._inputs = None

    def before_training_exp(self, strategy, **kwargs):
        self._inputs = experience_inputs(strategy.experience)

    def before_training_epoch(self, strategy, **kwargs):
        self.epochs.append([])

    def before_forward(self, strategy, **kwargs):
        for row in strategy.mb_x:
            matches = (self._inputs == row).all(dim=1).nonzero().flatten().tolist()
            assert len(matches) == 1, matches
            self.epochs[-1].append(matches[0])


@torch.no_grad()
def local_accuracy(model: nn.Module, dataset) -> float:
    """Plain single-process accuracy on the whole data set (no sharding, no reduction)."""
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    model.eval()
    correct = int((model(x).argmax(dim=1) == y).sum()) / len(y)
    model.train()
    return correct


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not be initialized" in the single-process run
        DistributedHelper.init_distributed(0, backend="gloo", use_cuda=False)
    rank, world = DistributedHelper.rank, DistributedHelper.world_size
    assert world == int(os.environ.get("WORLD_SIZE", "1")), (world, os.environ.get("WORLD_SIZE"))

    benchmark = gaussian_tasks(3, (32,), num_classes=2, train_size=TRAIN_SIZE, test_size=100, seed=1, task_labels=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    seen = SeenSamples()
    strategy = GPM(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        threshold=0.97,
        num_samples=40,
        train_mb_size=GLOBAL_BATCH // world,
        train_epochs=EPOCHS,
        eval_mb_size=64,
        plugins=[seen],
        evaluator=quiet_evaluator,
    )
    wrap_for_ddp(strategy)
    result = {"rank": rank, "world": world, "is_ddp": type(strategy.model).__name__, "after": []}

    for experience in benchmark.train_stream:
        strategy.train(experience)
        bare = DistributedHelper.unwrap_model(strategy.model)
        test_sets = [e.dataset.eval() for e in benchmark.test_stream]
        result["after"].append(
            {
                "params": {k: v.detach().clone() for k, v in bare.state_dict().items()},
                "gpm": strategy.gpm.state_dict(),
                "acc_reduced": distributed_accuracy_row(strategy.model, benchmark.test_stream, batch_size=7),
                "acc_local": [local_accuracy(bare, d) for d in test_sets],
            }
        )
    result["seen"] = seen.epochs

    class NoTaskLabels:
        current_experience = 0

    try:
        check_train_sharding(NoTaskLabels())
        result["no_task_labels_error"] = None
    except ValueError as error:
        result["no_task_labels_error"] = str(error)

    # A model that grows (task heads) cannot be wrapped before its heads exist.
    heads = MultiHeadClassifier(32, 2)
    growing = Naive(model=heads, optimizer=torch.optim.SGD(heads.parameters(), lr=0.1), evaluator=quiet_evaluator)
    try:
        wrap_for_ddp(growing)
        result["growing_model_error"] = None
    except ValueError as error:
        result["growing_model_error"] = str(error)

    # A weight changed on rank 1 only (as a plugin deciding per rank would): every rank must raise.
    with torch.no_grad():
        DistributedHelper.unwrap_model(strategy.model)[2].bias.add_(float(rank == 1))
    try:
        check_ranks_agree(strategy.model)
        result["drift_error"] = None
    except RuntimeError as error:
        result["drift_error"] = str(error)

    # A memory update that fails on rank 0 (e.g. NaN inputs): every rank must raise, none wait.
    def update_failing_on_rank_0():
        grams = {name: torch.full((dim, dim), float("nan")) for name, dim in strategy.gpm.memory.input_dims.items()}
        strategy.gpm.memory.update(grams, {name: 0.97 for name in grams})

    try:
        update_on_main_process(strategy.gpm.memory, update_failing_on_rank_0)
        result["update_error"] = None
    except (ValueError, RuntimeError) as error:
        result["update_error"] = f"{type(error).__name__}: {error}"

    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    shutdown_distributed(strategy)


if __name__ == "__main__":
    main(sys.argv[1])
