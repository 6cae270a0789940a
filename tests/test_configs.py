"""gpm_gainlora_experiments.common.configs: which fields of run configurations differ."""

from gpm_gainlora_experiments.common.configs import differing_fields


def test_nested_fields_are_named_by_their_dotted_path():
    configs = [{"seed": 0, "hp": {"epochs": 5, "lr": 0.01}}, {"seed": 1, "hp": {"epochs": 1, "lr": 0.01}}]
    assert differing_fields(configs) == ["hp.epochs", "seed"]
    assert differing_fields(configs, ignore=("seed",)) == ["hp.epochs"]


def test_a_field_missing_from_one_configuration_differs():
    assert differing_fields([{"a": 1, "b": None}, {"a": 1}]) == [], "missing reads as None"
    assert differing_fields([{"a": 1, "b": 2}, {"a": 1}]) == ["b"]


def test_mapping_order_does_not_make_values_differ():
    assert differing_fields([{"a": [1, {"x": 1, "y": 2}]}, {"a": [1, {"y": 2, "x": 1}]}]) == []


def test_an_ignored_name_covers_the_fields_under_it():
    configs = [{"options": {"lam": 1}, "options_x": 1}, {"options": {"lam": 2}, "options_x": 2}]
    assert differing_fields(configs, ignore=("options",)) == ["options_x"]
