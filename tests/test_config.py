from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from plmkit import cli
from plmkit.config import from_dict, help_text, option_names, parse, to_dict
from plmkit.errors import ConfigError


@dataclass
class ModelCfg:
    n_layer: int = field(default=2, metadata={"help": "number of blocks"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    norm: Literal["layernorm", "rmsnorm"] = field(default="layernorm", metadata={"help": "norm type"})

    def __post_init__(self) -> None:
        if self.n_layer < 1:
            raise ValueError(f"n_layer must be >= 1, got {self.n_layer}")


@dataclass
class LoraCfg:
    r: int = field(default=8, metadata={"help": "rank"})
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "modules"})


@dataclass
class Cfg:
    model: ModelCfg = field(default_factory=lambda: ModelCfg(n_layer=3), metadata={"help": "the network"})
    lora: LoraCfg | None = field(default=None, metadata={"help": "LoRA adapters (off when unset)"})
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    steps: int = field(default=100, metadata={"help": "optimizer steps"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    out_dir: Path = field(default=Path("runs/x"), metadata={"help": "where to write"})
    seed: int | None = field(default=None, metadata={"help": "random seed"})
    files: list[str] = field(default_factory=list, metadata={"help": "input files"})
    shape: tuple[int, ...] = field(default=(1, 2), metadata={"help": "a tuple"})
    weights: dict[str, float] = field(default_factory=dict, metadata={"help": "per-task weights"})


def test_defaults_and_nested_default_factory_kept():
    cfg = parse(Cfg, [])
    assert cfg == Cfg()
    assert cfg.model.n_layer == 3  # the field's default_factory, not ModelCfg's own default
    # Overriding one nested field keeps the other non-class defaults of that group.
    cfg = parse(Cfg, ["--model.dropout=0.0"])
    assert cfg.model == ModelCfg(n_layer=3, dropout=0.0)


def test_overrides_all_forms_and_types():
    cfg = parse(
        Cfg,
        [
            "--model.n_layer=4", "--lr", "1e-3", "--compile", "--out_dir=/tmp/run", "--seed", "7",
            "--files=a.txt, b.txt", "--shape=3,4,5", "--model.norm", "rmsnorm", "--steps=1e4",
            "--weights={a: 1, b: 0.5}",
        ],
    )
    assert cfg.model.n_layer == 4 and cfg.model.norm == "rmsnorm"
    assert cfg.lr == pytest.approx(1e-3) and isinstance(cfg.lr, float)
    assert cfg.compile is True
    assert cfg.out_dir == Path("/tmp/run")
    assert cfg.seed == 7
    assert cfg.files == ["a.txt", "b.txt"]
    assert cfg.shape == (3, 4, 5)
    assert cfg.steps == 10000 and isinstance(cfg.steps, int)
    assert cfg.weights == {"a": 1.0, "b": 0.5}
    assert parse(Cfg, ["--compile", "--no-compile"]).compile is False
    assert parse(Cfg, ["--compile", "false"]).compile is False
    assert parse(Cfg, ["--seed=none"]).seed is None
    assert parse(Cfg, ["--files=[a.txt, 'b,c.txt']"]).files == ["a.txt", "b,c.txt"]
    assert parse(Cfg, ["--files="]).files == []


def test_optional_nested_group_created_on_first_override():
    assert parse(Cfg, []).lora is None
    cfg = parse(Cfg, ["--lora.r=4"])
    assert cfg.lora == LoraCfg(r=4)


def test_yaml_then_cli_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  n_layer: 6\n  norm: rmsnorm\nlr: 1e-3\nsteps: 50\nlora:\n  r: 16\n")
    cfg = parse(Cfg, ["--config", str(path), "--steps=60"])
    assert cfg.model == ModelCfg(n_layer=6, norm="rmsnorm")
    assert cfg.lr == pytest.approx(1e-3)  # YAML reads "1e-3" as a string; converted to float
    assert cfg.steps == 60
    assert cfg.lora == LoraCfg(r=16)


def test_unknown_cli_key_names_it_and_suggests():
    with pytest.raises(ConfigError) as e:
        parse(Cfg, ["--model.n_layr=3"])
    assert str(e.value) == "unknown option --model.n_layr (did you mean --model.n_layer?)"
    with pytest.raises(ConfigError, match=r"^unknown option --lrr \(did you mean --lr\?\)$"):
        parse(Cfg, ["--lrr=1"])


def test_suggestions_are_near_matches_only(tmp_path):
    from plmkit.recipes import pretrain

    path = tmp_path / "optim.yaml"
    path.write_text("optim:\n  lr: 0.001\n")
    with pytest.raises(ConfigError) as e:
        parse(pretrain.Config, [f"--config={path}"])
    assert str(e.value) == f"unknown key 'optim' in {path}"  # not "did you mean 'sop'"
    with pytest.raises(ConfigError) as e:  # a known leaf under an unknown group: the real key
        parse(pretrain.Config, ["--optim.lr=1e-3"])
    assert str(e.value) == "unknown option --optim.lr (did you mean --train.lr?)"
    with pytest.raises(ConfigError) as e:
        parse(Cfg, ["--steeps=3"])
    assert str(e.value) == "unknown option --steeps (did you mean --steps?)"
    with pytest.raises(ConfigError) as e:
        parse(Cfg, ["--width=3"])
    assert str(e.value) == "unknown option --width"


@dataclass
class ChoiceCfg:
    kind: str = field(default="b", metadata={"help": "the kind", "choices": lambda: KINDS})


KINDS = {"alpha": 1, "beta": 2}


def test_dict_valued_choices_in_help_and_checked():
    assert "the kind: alpha, beta (default: 'b')" in help_text(ChoiceCfg)
    assert parse(ChoiceCfg, ["--kind=beta"]).kind == "beta"
    with pytest.raises(ConfigError) as e:
        parse(ChoiceCfg, ["--kind=betta"])
    assert str(e.value) == "--kind='betta' is not one of alpha, beta (did you mean 'beta'?)"


def test_unknown_yaml_key_names_file_and_suggests(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  n_layers: 3\n")
    with pytest.raises(ConfigError) as e:
        parse(Cfg, [f"--config={path}"])
    assert str(e.value) == f"unknown key 'model.n_layers' in {path} (did you mean 'model.n_layer'?)"


def test_wrong_type_messages(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse(Cfg, ["--steps=ten"])
    assert str(e.value) == "--steps expects int, got 'ten'"
    with pytest.raises(ConfigError) as e:
        parse(Cfg, ["--model.norm=rmsnrom"])
    assert str(e.value) == "--model.norm expects {layernorm,rmsnorm}, got 'rmsnrom' (did you mean 'rmsnorm'?)"
    path = tmp_path / "t.yaml"
    path.write_text("compile: maybe\n")
    with pytest.raises(ConfigError) as e:
        parse(Cfg, ["--config", str(path)])
    assert str(e.value) == f"key 'compile' in {path} expects bool, got 'maybe' (str)"
    with pytest.raises(ConfigError, match=r"^--lora is a group of options; set its fields as --lora.KEY$"):
        parse(Cfg, ["--lora=3"])
    with pytest.raises(ConfigError, match=r"^option --steps needs a value \(int\)$"):
        parse(Cfg, ["--steps"])
    with pytest.raises(ConfigError, match="unexpected argument 'foo'"):
        parse(Cfg, ["foo"])


def test_post_init_validation_and_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"^model: n_layer must be >= 1, got 0$"):
        parse(Cfg, ["--model.n_layer=0"])
    with pytest.raises(ConfigError, match="config file .*nope.yaml not found"):
        parse(Cfg, ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  n_layer: [1,\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+: invalid YAML"):
        parse(Cfg, ["--config", str(bad)])
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of options, got list"):
        parse(Cfg, ["--config", str(listy)])


def test_to_dict_from_dict_round_trip_through_json():
    cfg = parse(Cfg, ["--lora.r=2", "--out_dir=/x/y", "--shape=7", "--files=a,b", "--seed=3"])
    data = json.loads(json.dumps(to_dict(cfg)))
    assert data["out_dir"] == "/x/y" and data["shape"] == [7]
    assert from_dict(Cfg, data) == cfg
    with pytest.raises(ConfigError, match=r"unknown key 'lrate' in ckpt/config.json \(did you mean 'lr'\?\)"):
        from_dict(Cfg, {"lrate": 1.0}, source="ckpt/config.json")


def test_help_text_lists_every_option_with_type_default_and_help():
    text = help_text(Cfg)
    for name in option_names(Cfg):
        assert f"--{name} " in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip().startswith("--")}
    assert "int" in lines["--model.n_layer"] and "number of blocks (default: 3)" in lines["--model.n_layer"]
    assert "{layernorm,rmsnorm}" in lines["--model.norm"]
    assert "(default: 'layernorm')" in lines["--model.norm"]
    assert "peak learning rate (default: 0.0003)" in lines["--lr"]
    assert "(default: false)" in lines["--compile"]
    assert "(default: q_proj,v_proj)" in lines["--lora.targets"]
    assert "(default: None)" in lines["--seed"]


PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("**/*.yaml"))


def _flat_commands(commands=None, prefix="") -> dict[str, str]:
    out: dict[str, str] = {}
    for name, target in (commands or cli.COMMANDS).items():
        if isinstance(target, dict):
            out.update(_flat_commands(target, f"{prefix}{name} "))
        else:
            out[prefix + name] = target
    return out


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_shipped_preset_parses(preset):
    """A preset names its command in a comment (`plmkit pretrain --config ...`) or some recipe takes it."""
    commands = _flat_commands()
    named = re.search(r"plmkit ([a-z]+(?: [a-z]+)?) --config", preset.read_text(encoding="utf-8"))
    candidates = [named.group(1)] if named and named.group(1) in commands else list(commands)
    errors = {}
    for command in candidates:
        try:
            module = importlib.import_module(commands[command])
        except ModuleNotFoundError:
            continue
        try:
            parse(module.Config, ["--config", str(preset)])
            return
        except ConfigError as e:
            errors[command] = str(e)
    pytest.fail(f"{preset.name} parses for no recipe: {errors}")


@dataclass
class NeedsData:
    data: str = field(metadata={"help": "required input file"})
    model: ModelCfg = field(default_factory=ModelCfg, metadata={"help": "the network"})


def test_required_option_from_either_source(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  n_layer: 5\n")
    cfg = parse(NeedsData, ["--config", str(path), "--data=corpus.txt"])
    assert cfg.data == "corpus.txt" and cfg.model.n_layer == 5
    with pytest.raises(ConfigError, match=r"^missing required option --data$"):
        parse(NeedsData, ["--config", str(path)])
    # The error names where the bad value came from: the override, or the file.
    with pytest.raises(ConfigError, match=r"^--model.n_layer expects int, got 'x'$"):
        parse(NeedsData, ["--config", str(path), "--data=a", "--model.n_layer=x"])
    path.write_text("data: a\nmodel:\n  n_layer: [1]\n")
    with pytest.raises(ConfigError) as e:
        parse(NeedsData, ["--config", str(path)])
    assert str(e.value) == f"key 'model.n_layer' in {path} expects int, got [1] (list)"
    assert parse(NeedsData, ["--config", str(path), "--model.n_layer=2"]).model.n_layer == 2


@dataclass
class AdaptCfg:
    SHORTHAND: ClassVar[str] = "method"
    method: str = field(default="", metadata={"help": "which adapter"})
    r: int = field(default=8, metadata={"help": "rank"})


@dataclass
class ShortCfg:
    adapt: AdaptCfg = field(default_factory=AdaptCfg, metadata={"help": "adapter block"})
    model: ModelCfg = field(default_factory=ModelCfg, metadata={"help": "the network"})


def test_group_shorthand_from_cli_and_yaml_merges_with_its_fields(tmp_path):
    cfg = parse(ShortCfg, ["--adapt", "lora", "--adapt.r", "4"])
    assert (cfg.adapt.method, cfg.adapt.r) == ("lora", 4)
    assert parse(ShortCfg, ["--adapt.r=2", "--adapt=ia3"]).adapt == AdaptCfg(method="ia3", r=2)
    path = tmp_path / "run.yaml"
    path.write_text("adapt: prefix\n")
    assert parse(ShortCfg, ["--config", str(path), "--adapt.r=3"]).adapt == AdaptCfg(method="prefix", r=3)
    assert from_dict(ShortCfg, {"adapt": "lora"}).adapt.method == "lora"
    # A group without a shorthand still refuses a bare value.
    with pytest.raises(ConfigError, match=r"--model is a group of options; set its fields as --model.KEY"):
        parse(ShortCfg, ["--model", "big"])
