"""Adversarial attacks: ``attack(model, x, y) -> AttackResult``.

Example::

    from advrun.attacks import PGD
    result = PGD(eps=0.3, norm="inf", steps=40)(model, x, y)
    robust = (~result.success).float().mean()
"""

from advrun.attacks.base import Attack, AttackResult, check_adversarial, eval_mode
from advrun.attacks.fgsm import FGSM
from advrun.attacks.norms import lp_norm, parse_norm, project
from advrun.attacks.pgd import PGD

__all__ = [
    "Attack",
    "AttackResult",
    "FGSM",
    "PGD",
    "check_adversarial",
    "eval_mode",
    "lp_norm",
    "parse_norm",
    "project",
]
