import pytest

from tests.helpers.launch import check
from tests.helpers.runs import train


@pytest.fixture(scope="session")
def three_steps(embedded_model, tmp_path_factory):
    """A finished 3-step run with a checkpoint after every step (kept: all three). Tests copy it
    (``copy_run``) before changing anything in it."""
    out = tmp_path_factory.mktemp("three") / "run"
    check(train(embedded_model, out, "--max-steps", "3", "--save-every", "1", "--run.keep_last", "3"))
    return out
