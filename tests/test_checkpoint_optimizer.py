"""A checkpoint saved before the first optimizer step changes nothing about training: torch's
get_state_dict initializes AdamW's state with a zero-lr step (step counter 1), which would make the first
real update use t=2 bias correction (about 0.74x as large)."""

import torch

from lead_fast.checkpoint import load_checkpoint, save_checkpoint
from lead_fast.distributed import setup_distributed


def _model_and_opt():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    return m, torch.optim.AdamW(m.parameters(), lr=0.1)


def _step(m, opt):
    m(torch.ones(2, 4)).square().sum().backward()
    opt.step()
    opt.zero_grad()


def test_save_before_the_first_step_leaves_the_optimizer_untouched(tmp_path):
    setup_distributed()
    plain, plain_opt = _model_and_opt()
    saved, saved_opt = _model_and_opt()
    path = save_checkpoint(str(tmp_path), 0, saved, saved_opt, {"step": 0, "run_id": "r"})
    assert not saved_opt.state                                  # emptied again after saving
    _step(plain, plain_opt)
    _step(saved, saved_opt)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), saved.parameters()))
    # a resume from that checkpoint starts from an untouched optimizer too
    resumed, resumed_opt = _model_and_opt()
    assert load_checkpoint(path, resumed, resumed_opt)["optimizer_stepped"] is False
    assert not resumed_opt.state
    _step(resumed, resumed_opt)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), resumed.parameters()))
    # after a real step, the state is saved and restored as it is
    path = save_checkpoint(str(tmp_path), 1, plain, plain_opt, {"step": 1, "run_id": "r"})
    again, again_opt = _model_and_opt()
    assert load_checkpoint(path, again, again_opt)["optimizer_stepped"] is True
    assert int(again_opt.state[next(again.parameters())]["step"]) == 1
