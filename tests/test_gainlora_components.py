"""GainLoRA's building blocks without Avalanche: branches, gates, routing, constraints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avalanche_gainlora.branches import GatedLoraLinear, LoraBranches, branch_name
from avalanche_gainlora.bases import official_threshold
from avalanche_gainlora.gate_memory import GateMemory, gate_grams
from avalanche_gainlora.gates import GateBank, TaskGate, gate_activation, masked_mean
from avalanche_gainlora.inflora import DOWN_PROJECTION_SCALE, design_down_projection, reachable_energy
from avalanche_gainlora.olora import orthogonality_penalty
from avalanche_gainlora.routing import GateRouter
from tests.lm_fixtures import char_tokenizer, tiny_gpt2, tiny_llama, tiny_t5

BUILDERS = {"llama": tiny_llama, "t5": tiny_t5, "gpt2": tiny_gpt2}


def _inputs(model_kind: str, texts=("ab c", "xyz")) -> dict:
    batch = char_tokenizer()(list(texts), padding=True, return_tensors="pt")
    if model_kind == "t5":
        batch["labels"] = batch["input_ids"][:, :3].clone()
    return dict(batch)


def _randomise_up(branches: LoraBranches, index: int) -> None:
    with torch.no_grad():
        for up in branches.up(index).values():
            up.normal_()


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_branches_start_at_zero_and_weights_scale_each_branch(kind):
    model = BUILDERS[kind]()
    inputs = _inputs(kind)
    base = model(**inputs).logits
    branches = LoraBranches(model, rank=2, alpha=4)
    for _ in range(3):
        branches.add_branch()
    assert all(isinstance(layer, GatedLoraLinear) for layer in branches.layers().values())
    torch.testing.assert_close(model(**inputs).logits, base, atol=1e-5, rtol=0)  # B = 0 at injection

    for index in range(3):
        _randomise_up(branches, index)
    summed = model(**inputs).logits
    branches.weights.values = torch.ones(2, 3)
    torch.testing.assert_close(model(**inputs).logits, summed)
    branches.weights.values = torch.zeros(2, 3)
    torch.testing.assert_close(model(**inputs).logits, base, atol=1e-5, rtol=0)

    # Weight (1, 0, 0) for sample 0 is the model with branch 0 alone.
    branches.weights.values = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    only_first = model(**inputs).logits
    with torch.no_grad():
        for index in (1, 2):
            for up in branches.up(index).values():
                up.zero_()
    branches.weights.values = None
    torch.testing.assert_close(only_first[0], model(**inputs).logits[0])


def test_gated_layer_matches_the_branch_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    branches = LoraBranches(model, target_modules=["0"], rank=2, alpha=6)
    branches.add_branch(), branches.add_branch()
    for index in range(2):
        _randomise_up(branches, index)
    x = torch.randn(3, 4, 6)
    weights = torch.rand(3, 2)
    branches.weights.values = weights
    layer = branches.layers()["0"]
    expected = layer.base_layer(x)
    for index in range(2):
        a, b = branches.down(index)["0"], branches.up(index)["0"]
        expected = expected + weights[:, index, None, None] * (x @ a.T @ b.T) * (6 / 2)
    torch.testing.assert_close(model(x), expected)


def test_only_the_newest_branch_is_trainable_with_twelve_branches():
    model = tiny_llama()
    branches = LoraBranches(model, rank=2, alpha=4)
    for _ in range(12):
        branches.add_branch()
    assert branches.names[1] == branch_name(1) != branch_name(10) == branches.names[10]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(f".{branch_name(11)}." in name for name in trainable)
    assert len(trainable) == len(branches.parameters(11))
    model(**_inputs("llama"), labels=_inputs("llama")["input_ids"]).loss.backward()
    for index in range(11):
        assert all(p.grad is None for p in branches.parameters(index))
    assert all(p.grad is not None for p in branches.parameters(11))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_modules": ["query_key"]}, "match no layer"),
        ({"target_modules": ["embed_tokens"]}, "not linear"),
        ({"rank": 0}, "positive integer"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_branch_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        LoraBranches(tiny_llama(), **options)


def test_a_string_target_is_one_regular_expression_not_letters():
    branches = LoraBranches(tiny_llama(), target_modules=r".*\.q_proj")
    branches.add_branch()
    assert branches.layers() and all(name.endswith("q_proj") for name in branches.layers())


@pytest.mark.parametrize(("options", "field"), [({"alpha": 16}, "alpha 32"), ({"target_modules": ["q_proj"]}, "layers")])
def test_branch_state_of_other_settings_is_refused(options, field):
    saved = LoraBranches(tiny_llama(), rank=2, alpha=32)
    saved.add_branch()
    fresh = LoraBranches(tiny_llama(), **{"rank": 2, "alpha": 32, **options})
    with pytest.raises(ValueError, match=f"other settings: .*{field}.*build LoraBranches with the saved settings"):
        fresh.load_state_dict(saved.state_dict())
    assert fresh.num_branches == 0, "nothing is injected before the check"


def test_model_type_without_default_targets_asks_for_them():
    with pytest.raises(ValueError, match="pass target_modules"):
        LoraBranches(nn.Sequential(nn.Linear(3, 3)))


def test_gate_is_zero_for_inputs_orthogonal_to_its_key_and_ignores_padding():
    assert gate_activation(torch.zeros(1)).item() == 0.0
    embeddings = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded_more = torch.cat([embeddings, torch.randn(2, 3, 8)], dim=1)
    torch.testing.assert_close(
        masked_mean(embeddings, mask), masked_mean(padded_more, torch.cat([mask, torch.zeros(2, 3)], 1))
    )
    gate = TaskGate(8, 4)
    inputs = torch.randn(3, 8)
    p2 = gate.activations(inputs).projected
    with torch.no_grad():  # a key orthogonal to all three p2 vectors
        basis, _ = torch.linalg.qr(p2.T)
        gate.key.copy_(torch.randn(8) @ (torch.eye(8) - basis @ basis.T))
    assert gate(inputs).shape == (3,) and gate(inputs).abs().max() < 1e-5
    assert gate(torch.randn(3, 8)).abs().max() > 1e-2, "other inputs open it"


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_router_gates_generation_by_its_prompt(kind):
    model = BUILDERS[kind]()
    branches = LoraBranches(model, rank=2, alpha=4)
    branches.add_branch(), branches.add_branch()
    bank = GateBank(model.get_input_embeddings().embedding_dim, 8)
    bank.add(TaskGate(bank.dim, 8)), bank.add(TaskGate(bank.dim, 8))
    router = GateRouter(model, bank, branches.weights)
    router.attach()
    prompts = char_tokenizer(padding_side="left")(["ab c", "xyz"], padding=True, return_tensors="pt")
    expected = bank(router.pooled(prompts["input_ids"], prompts["attention_mask"]))

    seen = []
    handles = [
        layer.register_forward_pre_hook(lambda *_: seen.append(branches.weights.values.clone()))
        for layer in branches.layers().values()
    ]
    model.generate(**prompts, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    for handle in handles:
        handle.remove()
    assert len(seen) > len(handles)  # prompt pass and decoding steps all used the prompt's gates
    for values in seen:
        torch.testing.assert_close(values, expected)
    router.detach()
    assert branches.weights.values is None


def test_router_leaves_answer_tokens_out_of_a_decoder_only_gate():
    model = tiny_llama()
    branches = LoraBranches(model, rank=2, alpha=4)
    branches.add_branch()
    bank = GateBank(32, 8)
    bank.add(TaskGate(32, 8))
    router = GateRouter(model, bank, branches.weights)
    tokenizer = char_tokenizer()
    prompt = tokenizer(["ab c"], return_tensors="pt")
    full = tokenizer(["ab cxyz"], return_tensors="pt")
    labels = full["input_ids"].clone()
    labels[:, :4] = -100
    torch.testing.assert_close(
        router.pooled(full["input_ids"], full["attention_mask"], labels),
        router.pooled(prompt["input_ids"], prompt["attention_mask"]),
    )


def test_new_key_is_orthogonal_and_projected_updates_keep_old_gate_activations():
    torch.manual_seed(0)
    gate = TaskGate(16, 6)
    old_inputs = torch.randn(5, 16)
    memory = GateMemory(16, 6, threshold=1.0, rule="gpm")  # GPM's rule keeps the exact span at 1.0
    memory.update(gate_grams(gate, [old_inputs]), task=0)
    before = gate.activations(old_inputs)

    new_inputs = torch.randn(7, 16)
    key = memory.new_key(gate_grams(gate, [new_inputs])).float()
    assert float(key.norm()) == pytest.approx((16 / 3) ** 0.5)  # the official key norm
    successor = gate.successor(key)
    assert successor(old_inputs).abs().max() < 1e-5  # switched off for old inputs at the start
    assert successor(new_inputs).mean() > 0.05

    optimizer = torch.optim.Adam(successor.parameters(), lr=0.1)
    for _ in range(20):
        snapshot = memory.snapshot(successor)
        optimizer.zero_grad()
        (-successor(new_inputs).mean()).backward()
        optimizer.step()
        memory.project_update(successor, snapshot)
    after = successor.activations(old_inputs)
    torch.testing.assert_close(after.hidden, before.hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(after.projected, before.projected, atol=1e-5, rtol=0)
    assert after.value.abs().max() < 1e-4
    assert successor(new_inputs).mean() > 0.5  # it did learn on the new task


def test_gate_constraints_follow_the_gate_to_its_device():
    # The bases stay on the CPU; a gate elsewhere (meta here, CUDA in use) needs its projectors there.
    gate = TaskGate(16, 6)
    memory = GateMemory(16, 6, threshold=1.0)
    memory.update(gate_grams(gate, [torch.randn(5, 16)]), task=0)
    successor = gate.successor(torch.randn(16)).to("meta")
    memory.project_update(successor, memory.snapshot(successor))
    assert {projector.operator.device.type for projector in memory._projectors.values()} == {"meta"}


def test_official_threshold_schedule():
    schedule = official_threshold(10)
    assert schedule(0) == pytest.approx(0.995) and schedule(9) == pytest.approx(0.9995)
    assert official_threshold()(3) == pytest.approx(0.995 + 0.005 * 3 / 15)  # the benchmarks' T = 15
    with pytest.raises(ValueError):
        official_threshold(0)


def test_inflora_down_projection_is_orthogonal_to_old_inputs():
    torch.manual_seed(0)
    old = torch.randn(10, 3, dtype=torch.float64)
    basis, _ = torch.linalg.qr(old)
    new = torch.randn(10, 40, dtype=torch.float64)
    down = design_down_projection(new @ new.T, basis, rank=4)
    assert down.shape == (4, 10)
    assert (down @ basis).abs().max() < 1e-12
    torch.testing.assert_close(down @ down.T, torch.eye(4, dtype=torch.float64) * DOWN_PROJECTION_SCALE**2)
    first = design_down_projection(new @ new.T, None, rank=1)  # no memory: the top principal direction
    top = torch.linalg.eigh(new @ new.T).eigenvectors[:, -1]
    assert abs(float(first[0] @ top)) == pytest.approx(DOWN_PROJECTION_SCALE)


def test_olora_penalty_matches_its_formula():
    torch.manual_seed(0)
    old = [{"q": torch.randn(2, 5), "v": torch.randn(2, 5)} for _ in range(2)]
    new = {"q": torch.randn(2, 5), "v": torch.randn(2, 5)}
    expected = sum(float((o[k] @ new[k].T).abs().sum()) for o in old for k in ("q", "v"))
    assert orthogonality_penalty(old, new).item() == pytest.approx(expected, rel=1e-6)
    assert orthogonality_penalty([], new).item() == 0.0


def test_reachable_energy_is_the_share_of_the_trace_in_the_row_space_of_a():
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    c = u @ torch.diag(torch.tensor([5.0, 3.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)) @ u.T
    down = design_down_projection(c, None, 2)  # the two strongest directions, scaled
    assert reachable_energy(down, c) == pytest.approx(8.0 / 10.0)
    assert reachable_energy(u[:, 4:].T.float(), c) == pytest.approx(0.0, abs=1e-12)  # directions the data lacks


def test_the_packages_export_their_public_names_and_version():
    import avalanche_gainlora
    import avalanche_gpm

    for package in (avalanche_gainlora, avalanche_gpm):
        assert all(hasattr(package, name) for name in package.__all__)
        assert package.__version__ not in ("", None)
    from avalanche_gainlora.plugins.inflora import InfLoRAPlugin

    assert avalanche_gainlora.InfLoRAPlugin is InfLoRAPlugin
