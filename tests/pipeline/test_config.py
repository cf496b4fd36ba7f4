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
    (["train.lr=Infinity"], "lr must be a finite number"),
    (["train.lr=NaN"], "lr must be a finite number"),
    (["train.steps=-1"], "steps must be >= 0"),
    (["train.ema=1.5"], "ema must be in [0, 1)"),
    (["optimize.max_drop=-1"], "max_drop a finite number >= 0"),
    (["inference.top_k=3"], "unknown key 'inference.top_k'"),
])
def test_bad_overrides_are_one_clear_error(sets, message):
    with pytest.raises(PipelineError) as e:
        resolve(classify, "quick", parse_sets(sets))
    assert message in str(e.value)


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
