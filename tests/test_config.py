"""Every experiment's configuration raises the one ConfigError (a ValueError) for an unknown key
or a bad value, naming the key: the CLIs and users catch one type."""

import pytest

from attnopt.config import ConfigError, config_from_dict
from attnopt.experiments.convex import ModularConfig, StudentTeacherConfig
from attnopt.experiments.imdb import TrainConfig
from attnopt.experiments.synthetic import ConvergenceConfig, JointConfig, MatrixConfig, PathConfig

CONFIGS = [ConvergenceConfig, MatrixConfig, PathConfig, JointConfig, TrainConfig, ModularConfig,
           StudentTeacherConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_unknown_key_is_a_config_error_naming_it(cls):
    with pytest.raises(ConfigError, match=rf"{cls.__name__}: unknown config key\(s\) \['no_such_key'\]; valid keys"):
        cls.from_dict({"no_such_key": 1})
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("cls,key,value", [
    (ConvergenceConfig, "n_seeds", 0),
    (TrainConfig, "optimizer", "adagrad"),
    (TrainConfig, "batch_size", 0),
    (ModularConfig, "train_fraction", 1.5),
    (StudentTeacherConfig, "target", "mean"),
], ids=lambda x: getattr(x, "__name__", str(x)))
def test_bad_value_is_a_config_error_naming_the_key(cls, key, value):
    with pytest.raises(ConfigError, match=key):
        cls.from_dict({key: value})


def test_lists_become_tuples_for_tuple_fields():
    cfg = config_from_dict(ModularConfig, {"layers": [1, 2]})
    assert cfg.layers == (1, 2)
