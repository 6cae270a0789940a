"""Cached concatenations of branches and stacks of gates: same results, rebuilt when a parameter changes."""

import torch

from avalanche_gainlora.branches import LoraBranches, _side_by_side
from avalanche_gainlora.gates import GateBank, TaskGate
from avalanche_gainlora.parameter_cache import ParameterCache
from tests.lm_fixtures import tiny_llama


def test_cache_rebuilds_after_an_in_place_update_and_never_holds_a_graph():
    weight = torch.nn.Parameter(torch.ones(2, 2))
    cache, builds = ParameterCache(), []

    def build():
        builds.append(1)
        return weight * 2

    with torch.no_grad():
        first = cache.get([weight], build)
        assert cache.get([weight], build) is first and len(builds) == 1
        weight.add_(1.0)  # what an optimizer step does
        assert torch.equal(cache.get([weight], build), torch.full((2, 2), 4.0)) and len(builds) == 2
    assert cache.get([weight], build).requires_grad and len(builds) == 3  # a graph is needed: built anew


def test_cache_sees_a_fused_optimizer_step():
    """Fused kernels write parameters without bumping their version: the step itself must count."""
    weight = torch.nn.Parameter(torch.ones(2, 2))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    cache = ParameterCache()
    with torch.no_grad():
        before = cache.get([weight], lambda: weight * 2)
    version = weight._version
    weight.grad = torch.ones(2, 2)
    optimizer.step()
    assert weight._version == version, "this test needs a step that leaves the version alone"
    with torch.no_grad():
        assert torch.equal(cache.get([weight], lambda: weight * 2), weight * 2)
        assert not torch.equal(before, weight * 2)


def test_gate_bank_batches_frozen_gates_and_trains_the_last_alone():
    torch.manual_seed(0)
    bank = GateBank(dim=12, hidden=5)
    gate = TaskGate(12, 5)
    for _ in range(4):
        bank.add(gate)
        gate = gate.successor(torch.randn(12))
    pooled = torch.randn(7, 12)
    expected = torch.stack([g(pooled) for g in bank.gates], dim=1)
    values = bank(pooled)  # the last gate trains: computed on its own
    assert torch.allclose(values, expected, atol=1e-6)
    values.sum().backward()
    assert bank.current.down.weight.grad is not None and bank.gates[0].down.weight.grad is None
    with torch.no_grad():
        assert torch.allclose(bank(pooled), expected, atol=1e-6)
        bank.gates[1].key.mul_(-1.0)  # e.g. a loaded checkpoint: the stack must follow
        assert torch.allclose(bank(pooled)[:, 1], bank.gates[1](pooled), atol=1e-6)


def test_cached_branches_follow_a_changed_branch():
    torch.manual_seed(0)
    model = tiny_llama()
    branches = LoraBranches(model, rank=2)
    for _ in range(3):
        branches.add_branch()
    ids = torch.randint(3, 100, (2, 9))
    with torch.no_grad():
        for layer in branches.layers().values():
            for name in branches.names:
                layer.lora_B[name].weight.normal_()
        before = model(input_ids=ids).logits
        assert torch.equal(model(input_ids=ids).logits, before)  # served from the cache
        next(iter(branches.layers().values())).lora_B[branches.names[0]].weight.zero_()
        assert not torch.allclose(model(input_ids=ids).logits, before)


def test_training_concatenates_the_frozen_branches_once():
    torch.manual_seed(0)
    frozen = [torch.randn(2, 3) for _ in range(4)]
    newest = torch.nn.Parameter(torch.randn(2, 3))
    cache = ParameterCache()
    first = _side_by_side(cache, [*frozen, newest], dim=0)
    assert torch.equal(first, torch.cat([*frozen, newest.detach()]))
    kept = cache._value
    second = _side_by_side(cache, [*frozen, newest], dim=0)
    assert cache._value is kept, "the frozen part is built once"
    (second * torch.arange(30.0).view(10, 3)).sum().backward()
    assert torch.equal(newest.grad, torch.arange(30.0).view(10, 3)[8:10]), "the newest branch gets its own slice"
    with torch.no_grad():
        assert torch.equal(_side_by_side(ParameterCache(), [*frozen, newest], dim=1), torch.cat([*frozen, newest], 1))


def test_branches_follow_parameters_replaced_by_a_load():
    torch.manual_seed(0)
    model = tiny_llama()
    branches = LoraBranches(model, rank=2)
    branches.add_branch()
    ids = torch.randint(3, 100, (2, 9))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        state = {name: torch.randn_like(value) if "lora_B" in name else value for name, value in model.state_dict().items()}
        model.load_state_dict(state, assign=True)  # new Parameter objects, not copies into the old ones
        after = model(input_ids=ids).logits
    assert not torch.allclose(after, before)
