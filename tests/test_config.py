"""Config layering: dataclass defaults, then YAML, then key=value overrides, with checked keys and types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from selfevolve.config import load_config, parse_overrides, read_yaml, save_config
from selfevolve.errors import SelfEvolveError


@dataclass
class Lora:
    rank: int = 8
    alpha: float = 16.0


@dataclass
class Train:
    learning_rate: float = 1e-4
    epochs: int = 3
    mode: Literal["single", "batch", "sequential"] = "single"
    lora: Lora = field(default_factory=Lora)
    budget: int | float | None = None
    names: list[str] = field(default_factory=list)
    flag: bool = False

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nlora:\n  rank: 4\nnames: [a, b]\n")
    config = load_config(Train, path, ["lora.alpha=32", "epochs=7", "mode=batch", "budget=0.25", "flag=true"])
    assert config == Train(
        learning_rate=1e-4,
        epochs=7,
        mode="batch",
        lora=Lora(4, 32.0),
        budget=0.25,
        names=["a", "b"],
        flag=True,
    )


@dataclass
class Outer:
    train: Train = field(default_factory=lambda: Train(learning_rate=5e-4, lora=Lora(rank=16)))
    name: str = "outer"


def test_a_nested_override_keeps_the_defaults_its_parent_sets(tmp_path):
    assert load_config(Outer, None, ["train.epochs=9"]).train == Train(
        learning_rate=5e-4, epochs=9, lora=Lora(rank=16)
    )
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lora:\n    alpha: 2\n")
    config = load_config(Outer, path, ["name=x"])
    assert config == Outer(Train(learning_rate=5e-4, lora=Lora(rank=16, alpha=2.0)), "x")
    with pytest.raises(SelfEvolveError, match="unknown config key"):
        load_config(Outer, None, ["train.lora.ranks=3"])
    with pytest.raises(SelfEvolveError, match="learning_rate must be positive"):
        load_config(Outer, None, ["train.learning_rate=-1"])


def test_ints_widen_to_floats_and_save_round_trips(tmp_path):
    config = load_config(Train, overrides=["learning_rate=1", "budget=512"])
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float) and config.budget == 512
    saved = save_config(config, tmp_path / "out" / "config.yaml")
    assert load_config(Train, saved) == config


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["epoch=3"], "unknown config key(s) epoch"),
        (["lora.rnak=3"], "lora.rnak"),
        (["epochs=three"], "expected int"),
        (["epochs=true"], "expected int"),
        (["mode=fast"], "not one of"),
        (["learning_rate=-1"], "learning_rate must be positive"),
        (["novalue"], "not key=value"),
        (["=3"], "not key=value"),
        (["epochs=[unclosed"], "not valid YAML"),
        (["epochs.inner=3"], "expected int"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides, needle):
    with pytest.raises(SelfEvolveError) as info:
        load_config(Train, overrides=overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(SelfEvolveError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SelfEvolveError, match="must hold a mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(SelfEvolveError, match="not valid YAML"):
        read_yaml(tmp_path / "broken.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(Train, tmp_path / "empty.yaml") == Train()


def test_yaml_cannot_construct_python_objects(tmp_path):
    (tmp_path / "evil.yaml").write_text("epochs: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(SelfEvolveError, match="not valid YAML"):
        read_yaml(tmp_path / "evil.yaml")


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a.b.c=1", "a.d=x", "e="]) == {"a": {"b": {"c": 1}, "d": "x"}, "e": ""}


def test_a_library_config_check_is_a_user_error_and_a_value_error():
    from selfevolve.update.training import TrainingConfig

    with pytest.raises(
        SelfEvolveError, match=r"train\.epochs must be at least 1, got 0; set it to 1 or more"
    ):
        TrainingConfig(epochs=0)
    assert issubclass(SelfEvolveError, ValueError)  # older `except ValueError` callers still catch it
