"""Checkpoint files: round trip, atomicity, damage detection, and refusal of code-running pickles."""

from __future__ import annotations

import copy
import hashlib
import io
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from engine_tiny import tiny_config
from tiny_models import CLASS_NAMES, SMALLEST, build_tiny

import pcea.engine.checkpoint as checkpoint_module
from pcea.engine.checkpoint import (
    FORMAT,
    MAGIC,
    MAX_CHECKPOINT_BYTES,
    RESUME_KEYS,
    check_resumed_state,
    load_checkpoint,
    load_latest,
    open_checkpoint,
    previous_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pcea.engine.train import train, warmup_cosine
from pcea.errors import PceaFileError
from pcea.model import PCTClassifier


def _payload(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "model": {"linear.weight": torch.randn(4, 3, generator=gen), "linear.bias": torch.zeros(4)},
        "model_name": "pcea",
        "model_config": {"num_classes": 4, "centers": [64, 32]},
        "class_names": ["a", "b", "c", "d"],
        "epoch": seed,
        "rng": {"torch": torch.get_rng_state(), "python": (3, (1, 2, 3), None)},
        "metrics": {"val_oa": 0.5},
    }


def _wrap(body: bytes) -> bytes:
    """A correctly framed file around arbitrary payload bytes (what an attacker can write)."""
    digest = hashlib.sha256(body).hexdigest().encode()
    return MAGIC + b" " + digest + b" " + str(len(body)).encode() + b"\n" + body


def test_round_trip_keeps_every_value(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _payload(3))
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT
    assert loaded["epoch"] == 3
    assert loaded["class_names"] == ["a", "b", "c", "d"]
    assert torch.equal(loaded["model"]["linear.weight"], _payload(3)["model"]["linear.weight"])
    assert torch.equal(loaded["rng"]["torch"], _payload(3)["rng"]["torch"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_keep_previous_holds_the_earlier_version(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload(1), keep_previous=True)
    assert not previous_path(path).exists()
    save_checkpoint(path, _payload(2), keep_previous=True)
    assert previous_path(path).name == "last.prev.pt"
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(previous_path(path))["epoch"] == 1


def test_non_plain_payload_is_refused_at_save_time(tmp_path):
    with pytest.raises(TypeError, match=r"payload\['rng'\]\['numpy'\]: ndarray"):
        save_checkpoint(tmp_path / "x.pt", {"rng": {"numpy": np.zeros(3)}})
    assert not (tmp_path / "x.pt").exists()


def test_truncated_file_is_detected_at_every_length(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _payload())
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    for cut in [0, 5, len(MAGIC) + 3, *rng.integers(len(MAGIC) + 90, len(data), size=8), len(data) - 1]:
        damaged = tmp_path / f"cut{cut}.pt"
        damaged.write_bytes(data[:cut])
        with pytest.raises(PceaFileError, match=f"cut{cut}.pt: (empty file|truncated|not a pcea|damaged)"):
            load_checkpoint(damaged)


def test_any_altered_byte_is_detected(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _payload())
    data = bytearray(path.read_bytes())
    header_len = data.index(b"\n") + 1
    rng = np.random.default_rng(1)
    for pos in rng.integers(header_len, len(data), size=12):
        altered = bytearray(data)
        altered[pos] ^= 0x01
        damaged = tmp_path / "altered.pt"
        damaged.write_bytes(bytes(altered))
        with pytest.raises(PceaFileError, match="SHA-256 does not match"):
            load_checkpoint(damaged)
    appended = tmp_path / "appended.pt"
    appended.write_bytes(bytes(data) + b"x")
    with pytest.raises(PceaFileError, match="bytes more than its header"):
        load_checkpoint(appended)


class _RunsCode:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_checkpoint_crafted_to_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "model": {}, "epoch": _RunsCode(str(marker))}, buffer)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_wrap(buffer.getvalue()))  # valid header and hash: only the unpickler can stop it
    with pytest.raises(PceaFileError, match=r"evil.pt: refused: .*GLOBAL posix.system"):
        load_checkpoint(evil)
    assert not marker.exists()

    # A bare pickle without the pcea header is refused before it is unpickled at all.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(PceaFileError, match="raw.pt: not a pcea checkpoint"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_wrong_format_and_missing_files(tmp_path):
    buffer = io.BytesIO()
    torch.save({"format": "something-else/9"}, buffer)
    other = tmp_path / "other.pt"
    other.write_bytes(_wrap(buffer.getvalue()))
    with pytest.raises(PceaFileError, match="unsupported checkpoint format 'something-else/9'"):
        load_checkpoint(other)
    with pytest.raises(PceaFileError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(PceaFileError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_load_latest_falls_back_to_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload(1), keep_previous=True)
    save_checkpoint(path, _payload(2), keep_previous=True)
    used, payload, problems = load_latest(path)
    assert (used, payload["epoch"], problems) == (path, 2, [])

    path.write_bytes(path.read_bytes()[:-10])
    used, payload, problems = load_latest(path)
    assert used == previous_path(path)
    assert payload["epoch"] == 1
    assert len(problems) == 1 and "truncated" in problems[0]

    previous_path(path).write_bytes(b"")
    with pytest.raises(PceaFileError, match="no usable checkpoint.*truncated.*empty file"):
        load_latest(path)


def test_unwritable_destination_gives_a_file_error(tmp_path):
    # A path below a regular file cannot be created, even by root (unlike a chmod'ed directory).
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    with pytest.raises(PceaFileError, match="blocker/last.pt: cannot write the checkpoint"):
        save_checkpoint(blocker / "last.pt", _payload())


_WRITER = """
import os, sys, torch
from pcea.engine.checkpoint import load_checkpoint, save_checkpoint
start = load_checkpoint(sys.argv[1])["epoch"] + 1 if os.path.exists(sys.argv[1]) else 1
for i in range(start, 100000):
    save_checkpoint(sys.argv[1], {"epoch": i, "model": {"w": torch.full((300_000,), float(i))}},
                    keep_previous=True)
    print(i, flush=True)
"""


@pytest.mark.slow
def test_sigkill_while_writing_leaves_complete_files(tmp_path):
    # A process that does nothing but rewrite last.pt (keeping last.prev.pt), killed at random
    # moments: nearly every kill lands inside a write, and both files must still load.
    path = tmp_path / "last.pt"
    rng = np.random.default_rng(3)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip().isdigit()
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        last = load_checkpoint(path)
        assert torch.equal(last["model"]["w"], torch.full((300_000,), float(last["epoch"])))
        if previous_path(path).exists():  # the epoch before, or the same one when killed in between
            assert load_checkpoint(previous_path(path))["epoch"] in (last["epoch"] - 1, last["epoch"])


# -- issue 16: malformed payloads, special files, non-finite weights ------------------------------

def _framed(tmp_path, name: str, payload: dict):
    """A file with a valid header and hash around ``payload``: only the payload checks can refuse it."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    path = tmp_path / name
    path.write_bytes(_wrap(buffer.getvalue()))
    return path


@pytest.mark.parametrize("change, message", [
    ({"model": None}, r"no 'model' entry"),
    ({"model": "weights"}, r"'model' is not a mapping of parameter names to tensors \(found a str\)"),
    ({"model": {"w": [1.0, 2.0]}}, r"'model' is not a mapping of parameter names to tensors"),
    ({"model_config": [64, 32]}, r"its model_config is invalid: .*must be a mapping, not list"),
    ({"class_names": "abcd"}, r"'class_names' is not a list of strings"),
    ({"class_names": [1, 2, 3, 4]}, r"'class_names' is not a list of strings"),
    ({"epoch": "3"}, r"'epoch' is not a non-negative integer \(found a str\)"),
    ({"epoch": -1}, r"'epoch' is not a non-negative integer"),
])
def test_a_malformed_payload_with_a_valid_hash_is_one_error_naming_the_file(tmp_path, change, message):
    payload = {**_payload(), **change}
    payload = {k: v for k, v in payload.items() if v is not None}
    path = _framed(tmp_path, "bad.pt", payload)
    with pytest.raises(PceaFileError, match=f"bad.pt: malformed checkpoint: {message}"):
        open_checkpoint(path)  # load_checkpoint(path, require=MODEL_KEYS), then the model config


@pytest.mark.parametrize("key, value", [
    ("optimizer", "sgd"), ("optimizer", {"state": {}}), ("scheduler", 3), ("rng", {"torch": 1}),
    ("metrics", {"history": "none", "best": {}}), ("train_config", None),
])
def test_resume_keys_are_checked_when_resuming(tmp_path, key, value):
    good = {**_payload(), "train_config": {"epochs": 2}, "optimizer": {"state": {}, "param_groups": []},
            "scheduler": {"last_epoch": 1},
            "rng": {"python": (3, tuple(range(625)), None), "torch": torch.get_rng_state(),
                    "loader": torch.Generator().get_state(),
                    "numpy": {"key": torch.zeros(624, dtype=torch.int64), "pos": 0, "has_gauss": 0,
                              "gauss": 0.0}},
            "metrics": {"history": [{"epoch": 1}], "best": {"epoch": 1, "score": 0.5}}}
    assert load_checkpoint(_framed(tmp_path, "good.pt", good), require=RESUME_KEYS)["epoch"] == 0
    bad = {k: v for k, v in {**good, key: value}.items() if v is not None}
    path = _framed(tmp_path, "bad.pt", bad)
    with pytest.raises(PceaFileError, match=f"bad.pt: malformed checkpoint: .*'{key}'"):
        load_checkpoint(path, require=RESUME_KEYS)
    # load_latest skips it for the previous checkpoint, as for a damaged file.
    save_checkpoint(tmp_path / "last.prev.pt", good)
    path.rename(tmp_path / "last.pt")
    used, payload, problems = load_latest(tmp_path / "last.pt", require=RESUME_KEYS)
    assert used.name == "last.prev.pt" and "malformed checkpoint" in problems[0]


@pytest.mark.parametrize("change", [
    {"python": (3, tuple([2**80] * 625), None)}, {"python": 5}, {"torch": 1},
    {"numpy": {"key": "abc", "pos": 0, "has_gauss": 0, "gauss": 0.0}},
    {"numpy": {"key": torch.zeros(624, dtype=torch.int64), "pos": "x", "has_gauss": 0, "gauss": 0.0}},
])
def test_a_crafted_random_state_is_refused_with_what_the_resume_turns_into_one_line(change):
    """check_payload only outlines "rng"; set_rng_state refuses the rest with the exceptions that
    Trainer._restore names the checkpoint for (an OverflowError or AttributeError would escape it)."""
    generator = torch.Generator()
    good = rng_state(generator)
    with pytest.raises((KeyError, TypeError, ValueError, RuntimeError, IndexError)):
        set_rng_state({**good, **change}, generator)
    set_rng_state(good, generator)  # and the good state still restores
    assert torch.equal(generator.get_state(), good["loader"])


class _Timeout(BaseException):
    pass


@pytest.fixture
def guard():
    """Fail instead of hanging: a read that blocks is interrupted after 5 s."""
    def alarm(signum, frame):
        raise _Timeout("the read did not return")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_fifos_devices_and_huge_files_are_refused_before_reading(tmp_path, guard):
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)  # no writer: opening it for reading would block for ever
    with pytest.raises(PceaFileError, match=r"fifo.pt: is a FIFO, not a regular file"):
        load_checkpoint(fifo)
    zero = tmp_path / "zero.pt"
    zero.symlink_to("/dev/zero")  # endless data
    with pytest.raises(PceaFileError, match=r"zero.pt: is a device, not a regular file"):
        load_checkpoint(zero)
    sparse = tmp_path / "sparse.pt"
    with open(sparse, "wb") as f:  # 1 TiB of holes: no disk used, but reading it would exhaust memory
        f.write(MAGIC + b" " + b"0" * 64 + b" 1099511627776\n")
        f.truncate(2**40)
    with pytest.raises(PceaFileError, match=r"sparse.pt: 1,099,511,627,776 bytes, over the 4,294,967,296"):
        load_checkpoint(sparse)
    small = save_checkpoint(tmp_path / "small.pt", _payload())
    with pytest.raises(PceaFileError, match="over the 100-byte limit"):
        load_checkpoint(small, max_bytes=100)
    assert MAX_CHECKPOINT_BYTES == 4 * 2**30


def test_non_finite_weights_are_never_saved(tmp_path):
    payload = _payload()
    payload["model"]["linear.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"refusing to save non-finite weights \(linear.weight\)"):
        save_checkpoint(tmp_path / "nan.pt", payload)
    assert not list(tmp_path.iterdir())


# -- issue 23: checkpoints that pass the hash but would break what uses them ------------------

def _tiny_payload(**config_changes) -> dict:
    """What open_checkpoint needs, from the tiny model (SMALLEST), with ``config_changes`` applied."""
    model = build_tiny(size=SMALLEST)
    return {"model": model.state_dict(), "model_name": "pcea",
            "model_config": {**model.config.to_dict(), **config_changes}, "class_names": list(CLASS_NAMES)}


def test_a_crafted_model_config_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    """A huge declared size costs nothing: the model is first built on the meta device."""
    built = []  # every model open_checkpoint builds, to see where its weights were allocated

    def recording(config):
        built.append(PCTClassifier(config))
        return built[-1]

    monkeypatch.setattr(checkpoint_module, "PCTClassifier", recording)
    path = _framed(tmp_path, "points.pt", _tiny_payload(num_points=10**12))
    with pytest.raises(PceaFileError, match=r"points.pt: malformed checkpoint: its model_config is invalid: "
                                            r"num_points=1000000000000: at most 10,000,000"):
        open_checkpoint(path)
    path = _framed(tmp_path, "classes.pt", _tiny_payload(num_classes=3_000_000))
    with pytest.raises(PceaFileError, match=r"classes.pt: the stored weights do not fit the stored model "
                                            r"config: head.4.weight is \[4, 16\] in the file, "
                                            r"\[3000000, 16\]"):
        open_checkpoint(path)
    # Built for real, that head alone would be 3e6 x 16 floats (192 MB): only meta tensors were made.
    assert built and all(param.is_meta for model in built for param in model.parameters())
    path = _framed(tmp_path, "wide.pt", _tiny_payload(fuse_dim=10**6))
    with pytest.raises(PceaFileError, match=r"wide.pt: the stored weights do not fit"):
        open_checkpoint(path)


def test_a_model_pcea_cannot_feed_is_refused(tmp_path):
    """in_channels 7 with weights to match loads, but every forward would fail: pcea feeds 3 or 6."""
    model = build_tiny(size={**SMALLEST, "in_channels": 7})
    payload = {"model": model.state_dict(), "model_name": "pcea", "model_config": model.config.to_dict(),
               "class_names": list(CLASS_NAMES)}
    with pytest.raises(PceaFileError, match=r"seven.pt: malformed checkpoint: in_channels=7, but pcea feeds"):
        open_checkpoint(_framed(tmp_path, "seven.pt", payload))
    assert open_checkpoint(_framed(tmp_path, "good.pt", _tiny_payload()))[0].config.in_channels == 3


def _resumed_states(optimizer_name: str = "sgd", warmup: bool = False):
    """A model's optimiser and scheduler after two steps, as a run saves them, and fresh ones to load them."""
    def build():
        model = build_tiny(size=SMALLEST)
        if optimizer_name == "sgd":
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        scheduler = (torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(10, 2, 0.01)) if warmup
                     else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5, eta_min=1e-4))
        return model, optimizer, scheduler

    model, optimizer, scheduler = build()
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.rand(4, SMALLEST["num_points"], 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    return optimizer.state_dict(), scheduler.state_dict(), build


@pytest.mark.parametrize("optimizer_name, warmup", [("sgd", False), ("adamw", True)])
@pytest.mark.slow
def test_good_resumed_states_pass_and_are_left_as_they_were(optimizer_name, warmup):
    optimizer_state, scheduler_state, build = _resumed_states(optimizer_name, warmup)
    _, optimizer, scheduler = build()
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    before = copy.deepcopy((optimizer.state_dict(), scheduler.state_dict()))
    check_resumed_state(optimizer, scheduler, "last.pt")
    after = (optimizer.state_dict(), scheduler.state_dict())
    assert after[1] == before[1]
    assert after[0]["param_groups"] == before[0]["param_groups"]
    for index, state in before[0]["state"].items():
        for key, value in state.items():
            assert torch.equal(after[0]["state"][index][key], value), (index, key)


def _break_momentum(state: dict) -> None:
    state["state"][0]["momentum_buffer"] = torch.zeros(3, 3)  # the first weight is not 3 x 3


@pytest.mark.parametrize("warmup, breaks, message", [
    (False, lambda o, s: _break_momentum(o), r"RuntimeError: .*size"),
    (False, lambda o, s: o["param_groups"][0].update(lr="0.1"), r"TypeError"),
    (False, lambda o, s: o["param_groups"][0].update(momentum=float("nan")), r"non-finite"),
    (False, lambda o, s: s.update(T_max=0), r"ZeroDivisionError"),
    (False, lambda o, s: s.update(T_max="5"), r"TypeError"),
    (False, lambda o, s: s.update(last_epoch="2"), r"TypeError"),
    (False, lambda o, s: s.update(base_lrs=[-1.0]), r"base learning rates \[-1.0\]"),
    (False, lambda o, s: s.update(base_lrs=[]), r"learning rates \[\]"),
    (True, lambda o, s: s["lr_lambdas"][0].update(total="x"), r"TypeError"),
    (True, lambda o, s: s["lr_lambdas"][0].update(warmup=0, total=2, floor=float("inf")), r"next learning"),
])
@pytest.mark.slow
def test_a_resumed_state_that_loads_but_would_break_is_refused(warmup, breaks, message):
    optimizer_state, scheduler_state, build = _resumed_states("sgd", warmup)
    breaks(optimizer_state, scheduler_state)
    _, optimizer, scheduler = build()
    optimizer.load_state_dict(optimizer_state)  # loads without complaint: the problem shows only later
    scheduler.load_state_dict(scheduler_state)
    with pytest.raises(PceaFileError, match=rf"^last.pt: malformed checkpoint: its optimizer or scheduler "
                                            rf"state would break training \(.*{message}"):
        check_resumed_state(optimizer, scheduler, "last.pt")


@pytest.mark.slow
def test_resume_from_a_rehashed_checkpoint_with_a_broken_optimizer_is_one_error(tiny_h5, tmp_path):
    """End to end, as ``pcea train --resume`` meets it: the file's hash is right, its contents are not."""
    out = tmp_path / "run"
    quiet = {"log": lambda line: None}
    train(tiny_config(tiny_h5, epochs=2), out, stop_after=1, **quiet)
    payload = load_checkpoint(out / "last.pt")
    first = next(iter(payload["optimizer"]["state"]))
    payload["optimizer"]["state"][first]["momentum_buffer"] = torch.zeros(2, 2)
    save_checkpoint(out / "last.pt", payload)  # a correct header and SHA-256
    save_checkpoint(out / "last.prev.pt", payload)
    with pytest.raises(PceaFileError, match=r"last.pt: malformed checkpoint: its optimizer or scheduler "
                                            r"state would break training"):
        train(None, out, resume=True, **quiet)
