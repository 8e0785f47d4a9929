"""Checkpoint files: round trip, atomicity, damage detection, and refusal of code-running pickles."""

from __future__ import annotations

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

from pcea.engine.checkpoint import (
    FORMAT,
    MAGIC,
    MAX_CHECKPOINT_BYTES,
    MODEL_KEYS,
    RESUME_KEYS,
    load_checkpoint,
    load_latest,
    previous_path,
    save_checkpoint,
)
from pcea.errors import PceaFileError


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
    ({"model_config": [64, 32]}, r"'model_config' is not a mapping"),
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
        load_checkpoint(path, require=MODEL_KEYS)


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
