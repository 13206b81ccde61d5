"""rlhf.concurrent.run_concurrently: results in order, the caller's grad/inference modes in every worker, the
thread count restored, errors raised only after every worker has finished."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from rlhf.concurrent import run_concurrently


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_results_in_order_on_separate_threads(two_threads):
    names = run_concurrently(lambda: threading.current_thread().name, lambda: threading.current_thread().name)
    assert names[0] == threading.current_thread().name and names[1] != names[0]
    assert run_concurrently(lambda: 1, lambda: 2, lambda: 3) == [1, 2, 3]
    assert torch.get_num_threads() == 2


def test_workers_see_the_callers_autograd_modes(two_threads):
    def modes():
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    with torch.inference_mode():
        assert run_concurrently(modes, modes) == [(False, True), (False, True)]
    with torch.no_grad():
        assert run_concurrently(modes, modes) == [(False, False), (False, False)]
    assert run_concurrently(modes, modes) == [(True, False), (True, False)]


def test_an_error_is_raised_after_every_worker_finished(two_threads):
    finished = []

    def slow():
        time.sleep(0.2)
        finished.append(True)

    def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_concurrently(boom, slow)
    assert finished == [True]
    assert torch.get_num_threads() == 2


def test_one_thread_is_a_plain_loop():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        me = threading.current_thread().name
        assert run_concurrently(lambda: threading.current_thread().name, lambda: 5) == [me, 5]
    finally:
        torch.set_num_threads(before)
