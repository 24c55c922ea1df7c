"""Hyperparameter checks with torch.optim's wording, for built-in and third-party transforms."""

from __future__ import annotations


def learning_rate(lr) -> None:
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def nonnegative(label: str, value) -> None:
    """``Invalid {label} value: {value}`` unless value >= 0 (torch's wording)."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {label} value: {value}")


def below_one(label: str, value) -> None:
    """0 <= value < 1, a bound torch forgets for momentum."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid {label} value: {value} (must be in [0, 1))")


def unit_interval(label: str, value) -> None:
    """0 <= value <= 1, a bound torch forgets for dampening and alpha."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Invalid {label} value: {value} (must be in [0, 1])")


def positive(label: str, value) -> None:
    if not value > 0.0:
        raise ValueError(f"Invalid {label} value: {value} (must be > 0)")


def betas(value) -> None:
    for i, beta in enumerate(value):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
