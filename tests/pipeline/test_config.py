import pytest

from pipeline.config import load_file, parse_sets
from pipeline.errors import PipelineError
from pipeline.tasks import get_task
from pipeline.tasks.base import PRESETS, resolve

classify = get_task("classify")


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_resolve(preset):
    cfg = resolve(classify, preset)
    assert cfg.preset == preset and cfg.model_name in classify.architectures
    again = resolve(classify, preset, cfg.to_dict())
    assert again == cfg, "a saved config must resolve to itself"


def test_set_overrides_and_types():
    cfg = resolve(classify, "quick", parse_sets(["train.lr=0.01", "train.epochs=3", "model.widths=[8,16,32]"]))
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 3 and cfg.model.widths == (8, 16, 32)
    assert isinstance(resolve(classify, "quick", parse_sets(["train.lr=1"])).train.lr, float)


def test_switching_architecture_drops_the_presets_fields():
    cfg = resolve(classify, "quick", parse_sets(["model.name=vit", "model.depth=2"]))
    assert cfg.model_name == "vit" and cfg.model.depth == 2


@pytest.mark.parametrize("sets,message", [
    (["train.lrr=1"], "unknown key 'train.lrr'; did you mean 'train.lr'?"),
    (["trian.lr=1"], "unknown key 'trian'; did you mean 'train'?"),
    (["train.epochs=abc"], "train.epochs: expected int, got 'abc'"),
    (["train.epochs=1.5"], "train.epochs: expected int, got 1.5"),
    (["train.optimizer=adam"], "train.optimizer: expected one of ['adamw', 'sgd'], got 'adam'"),
    (["train.epochs=0"], "epochs must be >= 1"),
    (["model.name=alexnet"], "model.name 'alexnet' is not one of classify's models"),
    (["model.depth=2"], "unknown key 'model.depth'"),
    (["data.channels=2"], "channels must be 1 or 3"),
    (["train=5"], "train: expected a table of settings"),
    (["model=lenet"], "model: expected a table of settings"),
    (["train.lr=Infinity"], "train.lr: must be a finite number"),
    (["train.lr=NaN"], "train.lr: must be a finite number"),
    (["train.steps=-1"], "steps must be >= 0"),
    (["train.ema=1.5"], "ema must be in [0, 1)"),
    (["optimize.max_drop=-1"], "max_drop a finite number >= 0"),
    (["model.name=mlp", "model.dropout=NaN"], "model.dropout: must be a finite number, got nan"),
    (["benchmark.seconds=1e999"], "benchmark.seconds: must be a finite number, got inf"),
    (["preset=NaN"], "preset nan in a config: choose the preset with --preset"),
    (["preset=full"], "preset 'full' in a config: choose the preset with --preset"),
    (["train.device=bogus"], "device must be auto, cpu, cuda, cuda:N or mps, got 'bogus'"),
    (["train.device=cuda:abc"], "device must be auto, cpu, cuda, cuda:N or mps"),
    (["data.split_seed=-1"], "split_seed must be >= 0"),
    (["benchmark.threads=-1"], "threads must be >= 0"),
    (["model.name=lenet", "model.channels=[0,0]"], "channels must be >= 1, got (0, 0)"),
    (["model.name=mlp", "model.hidden=[0]"], "hidden must be >= 1"),
    (["model.name=mlp", "model.dropout=2"], "dropout must be in [0, 1), got 2.0"),
    (["model.image_size=100000"], "image_size must be <= 512"),
    (["x=" + "[" * 100000], "cannot be used: RecursionError"),
    (["train.epochs=" + "9" * 5000], "cannot be used: ValueError"),
    (["inference.top_k=3"], "unknown key 'inference.top_k'"),
])
def test_bad_overrides_are_one_clear_error(sets, message):
    with pytest.raises(PipelineError) as e:
        resolve(classify, "quick", parse_sets(sets))
    assert message in str(e.value)


@pytest.mark.parametrize("sets", [["model.name=vit", "model.num_heads=3"], ["model.name=mlp", "model.act=tanh"],
                                  ["model.widths=[8,16]"]])
def test_model_configs_torch_refuses_are_one_clear_error(sets):
    from pipeline.tasks.base import build_model

    with pytest.raises(PipelineError, match="cannot build .* from this model config"):
        build_model(classify, None, resolve(classify, "quick", parse_sets(sets)))


def test_parse_sets_needs_key_value():
    with pytest.raises(PipelineError, match="key=value"):
        parse_sets(["train.lr"])


def test_config_files(tmp_path):
    (tmp_path / "a.toml").write_text('[train]\nepochs = 2\n[model]\nname = "mlp"\nhidden = [32]\n')
    cfg = resolve(classify, "quick", load_file(tmp_path / "a.toml"))
    assert cfg.train.epochs == 2 and cfg.model.hidden == (32,)
    (tmp_path / "b.json").write_text('{"train": {"epochs": 2,}}')
    with pytest.raises(PipelineError, match="not valid JSON"):
        load_file(tmp_path / "b.json")
    with pytest.raises(PipelineError, match="not found"):
        load_file(tmp_path / "missing.toml")


def test_unknown_task_and_preset():
    with pytest.raises(PipelineError, match="unknown task 'clasify'; known: classify"):
        get_task("clasify")
    with pytest.raises(PipelineError, match="unknown preset"):
        resolve(classify, "huge")


# -- properties: any --set / config file gives a config or one clear error, never a traceback ----

import math  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipeline.config import to_dict  # noqa: E402


def _keys(cfg) -> list[str]:
    out = []
    for section, fields in to_dict(cfg).items():
        if isinstance(fields, dict):
            out += [f"{section}.{k}" for k in fields] + [section]
    return out + ["model.name", "task", "preset"]


KEYS = sorted(set(_keys(resolve(classify, "quick")) + _keys(resolve(classify, "quick", {"model": {"name": "vit"}}))))
NUMBERS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "0", "-1", "1e-300", "2", "0.5", "1e9",
                           "9223372036854775808", "true", "null", "[]", "{}", "[1, 2]", '{"a": 1}', '"x"', "mlp", "vit"])
VALUES = st.one_of(NUMBERS, st.text(max_size=12), st.integers(-10, 10**6).map(str), st.floats().map(repr))
KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=10), st.lists(st.sampled_from(KEYS + ["x", ""]), min_size=1,
                                                                     max_size=3).map(".".join))


def _one_clear_error_or_a_config(make):
    try:
        cfg = make()
    except PipelineError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert resolve(classify, cfg.preset, cfg.to_dict()) == cfg  # what is accepted is saved and read back as is
    floats = [v for section in cfg.to_dict().values() if isinstance(section, dict) for v in section.values()
              if isinstance(v, float)]
    assert all(math.isfinite(v) for v in floats)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEY, VALUES).map("=".join) | st.text(max_size=20), max_size=4))
def test_any_set_values(items):
    _one_clear_error_or_a_config(lambda: resolve(classify, "quick", parse_sets(items)))


JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
SECTION = st.dictionaries(st.sampled_from([k.split(".", 1)[1] for k in KEYS if "." in k] + ["name", "zzz"]), JSON,
                          max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["model", "data", "train", "optimize", "benchmark", "inference", "task",
                                        "preset", "other"]), st.one_of(SECTION, JSON), max_size=4))
def test_any_config_file(tmp_path_factory, layer):
    import json

    path = tmp_path_factory.mktemp("cfg") / "c.json"
    path.write_text(json.dumps(layer))
    _one_clear_error_or_a_config(lambda: resolve(classify, "quick", load_file(path)))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.sampled_from([".toml", ".json"]))
def test_any_config_text(tmp_path_factory, text, suffix):
    path = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
    path.write_text(text)
    _one_clear_error_or_a_config(lambda: resolve(classify, "quick", load_file(path)))
