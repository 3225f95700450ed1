"""Adversarial attacks: ``attack(model, x, y) -> AttackResult``.

Example::

    from advrun.attacks import PGD
    result = PGD(eps=0.3, norm="inf", steps=40)(model, x, y)
    robust = (~result.success).float().mean()

Each attack lives in its own module; the classes are importable from here (loaded on
first use, so ``import advrun.attacks`` stays cheap).
"""

from importlib import import_module

from advrun.attacks.base import (
    Attack, AttackResult, BoundedAttack, Goal, MinimumNormAttack, ThreatModelAttack, check_adversarial, eval_mode,
)
from advrun.attacks.fgsm import FGSM
from advrun.attacks.norms import lp_norm, parse_norm, project
from advrun.attacks.pgd import PGD

#: Class name -> module (in advrun.attacks) that defines it.
_LAZY = {
    "FGM": "fgm",
    "BIM": "bim",
    "MIFGSM": "mifgsm",
    "DeepFool": "deepfool",
    "FMN": "fmn",
    "CW": "cw",
    "LBFGS": "lbfgs",
    "LinearExact": "linear_exact",
    "RegionAttack": "region",
    "APGD": "apgd",
    "Square": "square",
    "Spatial": "spatial",
    "Patch": "patch",
    "FAB": "fab",
    "Ensemble": "ensemble",
    "Transfer": "transfer",
    "Universal": "universal",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"advrun.attacks.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'advrun.attacks' has no attribute {name!r}")


__all__ = [
    "Attack", "AttackResult", "BoundedAttack", "Goal", "MinimumNormAttack", "ThreatModelAttack", "FGSM", "PGD",
    "check_adversarial", "eval_mode", "lp_norm", "parse_norm", "project", *_LAZY,
]
