"""Golden values: three steps on f(x) = ½‖x‖² from x0 = [1, -2], in float64.

The expected numbers were worked out by hand (the SGD family) or independently of gdzoo, so a
change in any optimizer's arithmetic shows up here even if torch.optim changed the same way.
"""

from __future__ import annotations

import pytest
import torch

import gdzoo


GOLDEN = [
    ("sgd:lr=0.1", [0.729, -1.458]),
    ("sgd:lr=0.1,momentum=0.9", [0.486, -0.972]),
    ("sgd:lr=0.1,momentum=0.9,dampening=0.5", [0.60525, -1.2105]),
    ("sgd:lr=0.1,momentum=0.9,nesterov=true", [0.327321, -0.654642]),
    ("sgd:lr=0.1,momentum=0.9,weight_decay=0.1", [0.439649, -0.879298]),
    ("adam:lr=0.1", [0.7015862745, -1.7006233928]),
    ("adamw:lr=0.1,weight_decay=0.1", [0.6751012232, -1.6443686843]),
    ("adagrad:lr=0.1", [0.7804561814, -1.775821515]),
    ("adagrad:lr=0.1,lr_decay=0.5,initial_accumulator_value=0.1", [0.8347109204, -1.8278180021]),
    ("rmsprop:lr=0.01", [0.779982282, -1.7753494501]),
    ("rmsprop:lr=0.01,centered=true,momentum=0.9", [0.5496501846, -1.5406780304]),
]


def three_steps(spec: str, **hp) -> torch.Tensor:
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = gdzoo.optimizer(spec, [x], **hp)
    for _ in range(3):
        opt.zero_grad()
        loss = 0.5 * (x * x).sum()
        loss.backward()
        opt.step()
    return x.detach()


@pytest.mark.parametrize("spec,expected", GOLDEN, ids=[s for s, _ in GOLDEN])
def test_golden(spec, expected):
    x = three_steps(spec)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)


def test_golden_presets_match_their_spelled_out_form():
    """``momentum`` and ``nesterov`` are sgd with momentum=0.9 (and nesterov) at lr=0.01."""
    torch.testing.assert_close(three_steps("momentum"), three_steps("sgd:lr=0.01,momentum=0.9"), rtol=0, atol=0)
    torch.testing.assert_close(three_steps("nesterov"), three_steps("sgd:lr=0.01,momentum=0.9,nesterov=true"),
                               rtol=0, atol=0)
    # and keywords give the same numbers as the spec string
    torch.testing.assert_close(three_steps("sgd", lr=0.1, momentum=0.9, nesterov=True),
                               torch.tensor(GOLDEN[3][1], dtype=torch.float64), rtol=0, atol=1e-9)


def test_golden_sgd_by_hand():
    """The plain SGD line is x_k = (1 - lr)^k x0: check against the closed form as well."""
    torch.testing.assert_close(three_steps("sgd:lr=0.1"), 0.9**3 * torch.tensor([1.0, -2.0], dtype=torch.float64),
                               rtol=0, atol=1e-15)
