"""The unit tier: in-process, no Ray, no process spawned, each test well under 2 s.

Three limits hold every test here:
- CALL_BUDGET_S of this process's CPU time for the test itself, and SETUP_AND_CALL_BUDGET_S with
  its fixtures (a module fixture counts in its first test): the limits that keep the tier honest.
  Tests run single-threaded, so on an idle machine CPU time is about the wall time, and it hardly
  moves with the load of the shared 2-core machines that run this suite: the tier took 54.6 CPU s
  in 70 s at a load of about 4-7 and 54.1 CPU s in 266 s at a load of 8-12. One test's CPU time
  still varied up to 1.9x between runs on a loaded machine (2.7 to 5.1 s for the first test to
  train the evaluation model, its fixture included), hence the room above the 2 s target.
- UNIT_TIMEOUT_S of wall time (pytest-timeout), a guard against what CPU time does not see: a
  hang, a sleep, a wait on another process. It cannot be tight: at a load of 12 a test of 0.9 CPU
  s took 32 s (37x) and one of 2 CPU s 31 s; 120 s leaves room for that.
A test over either limit belongs in tests/integration, or has a workload too big for what it
asserts.
"""

import time
from pathlib import Path

import pytest
import torch

CALL_BUDGET_S = 3.0
SETUP_AND_CALL_BUDGET_S = 8.0
UNIT_TIMEOUT_S = 120
HERE = Path(__file__).resolve().parent
_CPU_START = pytest.StashKey[float]()
_CALL_START = pytest.StashKey[float]()


def _is_unit(item) -> bool:
    return item.path.is_relative_to(HERE)  # the hooks see every collected test, integration too


def pytest_collection_modifyitems(items):
    for item in items:
        if _is_unit(item):
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_CPU_START] = time.process_time()  # before the fixtures are set up


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    item.stash[_CALL_START] = time.process_time()  # the fixtures are set up


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.passed or not _is_unit(item):
        return
    now = time.process_time()
    for used, budget, what in ((now - item.stash[_CALL_START], CALL_BUDGET_S, "in its body"),
                               (now - item.stash[_CPU_START], SETUP_AND_CALL_BUDGET_S,
                                "with its fixtures")):
        if used > budget:
            report.outcome = "failed"
            report.longrepr = (f"{item.nodeid} used {used:.1f} CPU s {what}; the unit tier's "
                               f"budget is {budget} s (tests/unit/conftest.py)")
            return


@pytest.fixture(scope="session", autouse=True)
def _one_intra_op_thread():
    """Tiny networks on shared cores: intra-op threads that spin-wait for each other made
    test_engine.py 20x slower (402 s with 2 threads at load 5-7, 22 s with one), so the whole
    unit tier runs single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def no_run_plots():
    """A finished run draws two PNGs (about 1 s of matplotlib, more than the tiny run's training)
    in tests that assert nothing about them: modules that ask for this skip the drawing.
    test_run_outputs.py checks the PNGs, and every integration run draws them."""
    from adr_scale.run import outputs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outputs, "plot_learning_curves", lambda *args, **kwargs: None)
        patch.setattr(outputs, "plot_schedules", lambda *args, **kwargs: None)
        yield
