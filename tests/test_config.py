"""One validated configuration: bad values are refused before any work, naming the field."""

import pytest

from dynslice.config import CompressConfig, ConfigError, SweepConfig, load_config, read_config


@pytest.mark.parametrize("data,field", [
    ({"plan": {"target": 1.0}}, "plan.target"),
    ({"plan": {"target": 0.2, "variation": 0.3}}, "plan"),
    ({"plan": {"planner": "magic"}}, "plan.planner"),
    ({"calibration": {"nsamples": 0}}, "calibration.nsamples"),
    ({"modle": {"source": "x"}}, "modle"),
    ({"model": {"dtype": "int8"}}, "model.dtype"),
    ({"device": "tpu"}, "device"),
    ({"run_name": "../escape"}, "run_name"),
])
def test_bad_values_name_their_field(data, field):
    with pytest.raises(ConfigError, match=rf"invalid configuration: {field}"):
        load_config(data)


def test_defaults_are_the_demo():
    config = load_config({})
    assert isinstance(config, CompressConfig)
    assert (config.model.source, config.calibration.source, config.plan.planner, config.plan.target) == \
        ("smollm2-135m", "wiki", "dynamic", 0.25)
    assert config.plan.effective_variation == 0.125


def test_overrides_and_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("plan: {target: 0.3}\ngrid: {targets: [0.1, 0.2]}\n")
    config = read_config(str(path), SweepConfig, ["plan.variation=0.05", "evaluation.tasks=[]"])
    assert config.plan.target == 0.3 and config.plan.variation == 0.05 and config.evaluation.tasks == []
    assert config.grid.targets == [0.1, 0.2]
    with pytest.raises(ConfigError, match="grid"):
        read_config(str(path), CompressConfig)  # a sweep's grid is not part of a compress configuration
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config({}, overrides=["plan.target"])


def test_schema_is_a_form():
    """Deployments render this schema as the run form in the Prefect UI."""
    schema = CompressConfig.model_json_schema()
    assert schema["additionalProperties"] is False
    assert {"model", "calibration", "plan", "evaluation", "store"} <= set(schema["properties"])


@pytest.mark.parametrize("selection,message", [
    ({"source": "wiki", "split": None}, "must name a held-out split"),
    ({"source": "wiki", "split": "test"}, "must not be `test`"),
    ({"source": "eval.txt", "split": None}, "must differ from the evaluation"),
])
def test_selection_is_held_out(selection, message):
    data = {"selection": selection, "evaluation": {"ppl": "eval.txt"}}
    with pytest.raises(ConfigError, match=message):
        load_config(data)
    assert load_config({"selection": {"source": "heldout.txt", "split": None}}).selection.split is None


def test_bad_yaml_and_missing_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("plan: {target: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config(str(bad))
