"""pcea.errors: one test of a count, worded the same by every layer that checks one."""

import numpy as np
import pytest

from pcea.bench import BenchConfig
from pcea.cli import main
from pcea.data.transforms import Subsample
from pcea.engine.config import TrainConfig
from pcea.errors import PceaError, check_positive_int, is_positive_int, positive_int_problem
from pcea.model import ModelConfig


@pytest.mark.parametrize("value, ok", [
    (1, True), (7, True), (np.int64(3), True), (2**40, True),
    (0, False), (-1, False), (True, False), (2.0, False), ("3", False), (None, False), (np.float32(4), False),
])
def test_is_positive_int(value, ok):
    assert is_positive_int(value) is ok


def test_check_positive_int_returns_a_python_int_or_raises_the_error_asked_for():
    assert type(check_positive_int("k", np.int32(5))) is int
    with pytest.raises(PceaError, match=r"^k=0: expected a positive integer$"):
        check_positive_int("k", 0)
    with pytest.raises(ValueError, match=r"^k=2.5: expected a positive integer$"):
        check_positive_int("k", 2.5, error=ValueError)


def test_every_layer_words_a_bad_count_the_same(capsys):
    """The library check, both config dataclasses, the benchmark settings, the transforms and
    the command line refuse 0 with the one message of positive_int_problem."""
    with pytest.raises(ValueError, match=positive_int_problem("memory", 0)):
        ModelConfig(memory=0)
    with pytest.raises(PceaError, match=positive_int_problem("epochs", 0)):
        TrainConfig(epochs=0)
    with pytest.raises(PceaError, match=positive_int_problem("rounds", 0)):
        BenchConfig(rounds=0).validate()
    with pytest.raises(ValueError, match=positive_int_problem("num_points", 0)):
        Subsample(0)
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--model", "pcea", "--num-classes", "0"])
    assert exit_info.value.code == 2
    assert "argument --num-classes: 0: expected a positive integer" in capsys.readouterr().err
