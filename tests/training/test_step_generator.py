"""Masks drawn inside a step function must survive a resume: step_generator reads the checkpointed RNG."""

import torch

from plmkit.objectives.mlm import MaskingConfig, mask_tokens
from plmkit.training import step_generator


def _masks(n: int) -> list[torch.Tensor]:
    ids = torch.arange(5, 69).repeat(4, 1)
    cfg = MaskingConfig(mask_id=1, vocab_size=100, special_ids=(0, 1, 2))
    return [mask_tokens(ids, cfg, step_generator())[0] for _ in range(n)]


def test_restored_rng_state_redraws_the_same_masks_and_fresh_steps_differ() -> None:
    torch.manual_seed(123)
    uninterrupted = _masks(6)
    torch.manual_seed(123)
    _masks(3)
    state = torch.get_rng_state()  # what a checkpoint after step 3 holds
    torch.manual_seed(999)  # a new process starts with some other state
    torch.set_rng_state(state)
    resumed = _masks(3)
    for a, b in zip(uninterrupted[3:], resumed):
        assert torch.equal(a, b)
    assert not torch.equal(uninterrupted[0], uninterrupted[1])  # dynamic masking: a new mask per step
