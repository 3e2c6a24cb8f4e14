"""The ``grpo`` preset against TRL 1.16's own ``GRPOTrainer`` on one fixed batch: the same model directory,
prompts, completions and rewards. The advantages are TRL's formula written with TRL's own helpers (its code
computes them inside generation), and the loss and every parameter's gradient come from TRL's own
``compute_loss``; lead_fast's come from its updater (the shared-prompt rows it uses on CPU, the loss head,
the aggregation over the mini-batch)."""

import random

import pytest
import torch

pytest.importorskip("trl")

G, PROMPT_LEN = 4, 6
LENGTHS = [3, 7, 5, 1, 9, 4, 6, 2]      # two prompts, four completions each


def _batch(vocab: int, seed: int = 0):
    rng = random.Random(seed)
    prompts = [[rng.randrange(4, vocab) for _ in range(PROMPT_LEN)] for _ in range(len(LENGTHS) // G)]
    completions = [[rng.randrange(4, vocab) for _ in range(n)] for n in LENGTHS]
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    return prompts, completions, rewards


def _trl_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPOTrainer._generate_and_score_completions, sum_then_normalize with scale_rewards "group", one function."""
    from trl.trainer.utils import nanstd

    mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    return (rewards - mean) / (std + 1e-4)


def _trl_loss_and_grads(model_dir, tmp_path, prompts, completions, advantages, old, pad_id, **config):
    from trl import GRPOConfig, GRPOTrainer
    from datasets import Dataset

    args = GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to=[], num_generations=G,
                      per_device_train_batch_size=len(LENGTHS), max_completion_length=max(LENGTHS), bf16=False,
                      gradient_checkpointing=False, **config)
    trainer = GRPOTrainer(model=model_dir, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_list([{"prompt": "x"}] * len(LENGTHS)))
    trainer.current_gradient_accumulation_steps = 1
    T = max(LENGTHS)
    completion_ids = torch.tensor([c + [pad_id] * (T - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (T - len(c)) for c in completions])
    inputs = dict(prompt_ids=torch.tensor([prompts[i // G] for i in range(len(LENGTHS))]),
                  prompt_mask=torch.ones(len(LENGTHS), PROMPT_LEN, dtype=torch.long), completion_ids=completion_ids,
                  completion_mask=completion_mask, advantages=advantages, num_items_in_batch=completion_mask.sum(),
                  old_per_token_logps=None if old is None else
                  torch.stack([torch.cat([o, torch.zeros(T - len(o))]) for o in old]))
    model = trainer.model
    model.train()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


def _lead_fast_loss_and_grads(model_dir, tmp_path, prompts, completions, advantages, old, backend, **algo):
    import torch.distributed as dist

    from lead_fast.cli import parse_args
    from lead_fast.model import PolicyWithHead, load_model
    from lead_fast.update import Sample, Updater, update_settings

    cfg = parse_args(["--preset", "grpo", "--model", model_dir, *[x for k, v in algo.items()
                                                                   for x in (f"--algo.{k}", str(v))]])
    settings, loss = update_settings(cfg, "cpu")
    assert settings.shared_prompt and not settings.packed       # the CPU default layout
    policy = PolicyWithHead(load_model(model_dir, torch.float32, torch.device("cpu")), backend=backend)
    policy.train()
    samples = [Sample(prompts[i // G], c, float(advantages[i]), 0.0, old_logprobs=None if old is None else old[i])
               for i, c in enumerate(completions)]
    # a world of one; another test in this process (a Trainer built in-process) may have made it already
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    assert dist.get_world_size() == 1
    try:
        updater = Updater(policy, None, None, None, settings, loss, pad_id=0, device=torch.device("cpu"), rank=0,
                          world=1)
        sums = updater._accumulate(samples, None)
    finally:
        if own:
            dist.destroy_process_group()
    return float(sums["loss"]), {n: p.grad for n, p in policy.lm.named_parameters()}


def _old_logprobs(model_dir, prompts, completions, seed=1):
    """Per-token log-probs of a nearby policy (the weights moved a little), so that ratios leave the clip range."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        out = []
        for i, c in enumerate(completions):
            ids = torch.tensor([prompts[i // G] + c])
            logp = torch.log_softmax(m(ids).logits[0, PROMPT_LEN - 1: -1], -1)
            out.append(logp.gather(-1, torch.tensor(c)[:, None])[:, 0])
    return out


CASES = {
    "defaults": ({}, {}, False),
    "clipped_asymmetric_entropy": (dict(epsilon_high=0.28, entropy_coef=0.01),
                                   dict(clip_high=0.28, entropy_coef=0.01), True),
    "dr_grpo_scaling": (dict(scale_rewards="none"), dict(scale_rewards="none"), True),
}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_grpo_preset_loss_and_gradient_equal_trls_grpo_trainer(tiny_model_dir, tmp_path, case, backend):
    from transformers import AutoTokenizer

    from lead_fast.algo import lead_advantages

    trl_config, lead_algo, with_old = CASES[case]
    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    prompts, completions, rewards = _batch(vocab)
    group_ids = torch.arange(len(LENGTHS)) // G
    scale = lead_algo.get("scale_rewards", "group") == "group"
    ours, _ = lead_advantages(rewards, group_ids, reweight=False, eps=1e-4, scale=scale)
    theirs = _trl_advantages(rewards) if scale else rewards - rewards.view(-1, G).mean(1).repeat_interleave(G)
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=1e-6)
    old = _old_logprobs(tiny_model_dir, prompts, completions) if with_old else None
    pad = AutoTokenizer.from_pretrained(tiny_model_dir).pad_token_id
    trl_loss, trl_grads = _trl_loss_and_grads(tiny_model_dir, tmp_path, prompts, completions, theirs, old, pad,
                                              **trl_config)
    loss, grads = _lead_fast_loss_and_grads(tiny_model_dir, tmp_path, prompts, completions, ours, old, backend,
                                            **lead_algo)
    assert loss == pytest.approx(trl_loss, rel=1e-5, abs=1e-6)
    assert abs(trl_loss) > 1e-3 or case == "defaults"       # on-policy with advantages summing to 0 per group
    assert set(grads) == set(trl_grads)
    for name, g in grads.items():
        torch.testing.assert_close(g, trl_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert max(g.abs().max().item() for g in grads.values()) > 1e-3       # a gradient worth comparing
