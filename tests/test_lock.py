"""pcea.lock: the advisory lock that names its holder (run directories, downloads)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from pcea.lock import HolderLock, Timeout


def test_a_refused_attempt_leaves_the_holder_named(tmp_path):
    path = tmp_path / ".lock"
    held = HolderLock(path).acquire(wait=False)
    me = f"pid {os.getpid()} on {socket.gethostname()}, started 20"
    for _ in range(2):  # a lock that truncated its file on open would wipe the record on the first try
        other = HolderLock(path)
        with pytest.raises(Timeout):
            other.acquire(wait=False)
        assert other.holder().startswith(me)
    held.release()
    assert not path.exists()
    HolderLock(path).acquire(wait=False).release()


def test_a_waiter_ends_up_holding_the_live_file_not_the_removed_one(tmp_path):
    path = tmp_path / ".lock"
    first = HolderLock(path).acquire(wait=False)
    waiter = HolderLock(path)
    thread = threading.Thread(target=waiter.acquire, kwargs={"wait": True})
    thread.start()
    thread.join(0.3)
    assert thread.is_alive()  # it waits while the first holds the lock
    first.release()  # removes the file the waiter opened
    thread.join(10)
    assert not thread.is_alive() and path.exists()
    with pytest.raises(Timeout):  # the waiter holds the file at the path, so a newcomer is refused
        HolderLock(path).acquire(wait=False)
    waiter.release()
    assert not path.exists()


def test_an_unnamed_holder_is_said_to_be_unnamed(tmp_path):
    path = tmp_path / ".lock"
    path.write_text("pid 12")  # an older pcea download's record
    assert HolderLock(path).holder() == "held by a process that did not say who it is"
