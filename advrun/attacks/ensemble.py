"""An ensemble of attacks, per sample the worst case, in the manner of AutoAttack (Croce & Hein
2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", Sect. 5): the attacks run in turn, each on the samples no earlier one has fooled, so
a sample counts as robust only if it survives every attack.

``version`` picks AutoAttack's published sets (:data:`VERSIONS`): ``standard`` (APGD-CE, APGD-T,
FAB-T, Square), ``plus`` (AA+) and ``rand`` (for models that are random at test time); ``custom``
takes the list ``attacks``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from advrun.attacks.apgd import APGD
from advrun.attacks.base import (
    Attack, AttackResult, BoundedAttack, Bounds, Goal, MinimumNormAttack, WorstCase, check_adversarial,
)
from advrun.attacks.fab import FAB
from advrun.attacks.norms import norm_name, project
from advrun.attacks.square import Square
from advrun.errors import Choice, InvalidValue, keyed


def standard_attacks(eps: float, norm: float) -> list[Attack]:
    """AutoAttack's standard version: APGD-CE, APGD-T over 9 target classes, FAB-T over 9 target
    classes (100 iterations and one run each), Square with 5,000 queries."""
    return [
        APGD(eps=eps, norm=norm, loss="ce"),
        APGD(eps=eps, norm=norm, loss="dlr_targeted", n_target_classes=9),
        FAB(eps=None, norm=norm, n_target_classes=9),
        Square(eps=eps, norm=norm, n_queries=5000),
    ]


def plus_attacks(eps: float, norm: float) -> list[Attack]:
    """AutoAttack's plus version (AA+): APGD-CE and APGD-DLR with 5 restarts, FAB with 5 restarts,
    Square with 5,000 queries (one run, as AutoAttack's), then APGD-T and FAB-T over 9 target
    classes (one run each); 100 iterations for the APGDs and FABs."""
    return [
        APGD(eps=eps, norm=norm, loss="ce", n_restarts=5),
        APGD(eps=eps, norm=norm, loss="dlr", n_restarts=5),
        FAB(eps=None, norm=norm, n_restarts=5),
        Square(eps=eps, norm=norm, n_queries=5000),
        APGD(eps=eps, norm=norm, loss="dlr_targeted", n_target_classes=9),
        FAB(eps=None, norm=norm, n_target_classes=9),
    ]


def rand_attacks(eps: float, norm: float) -> list[Attack]:
    """AutoAttack's rand version, for models that are random at test time: APGD-CE and APGD-DLR,
    one run each, every gradient the mean over 20 passes (expectation over transformation)."""
    return [
        APGD(eps=eps, norm=norm, loss="ce", eot_samples=20),
        APGD(eps=eps, norm=norm, loss="dlr", eot_samples=20),
    ]


#: ``version`` -> the members it runs, given the ensemble's budget and norm.
VERSIONS: dict[str, Callable[[float, float], list[Attack]]] = {
    "standard": standard_attacks, "plus": plus_attacks, "rand": rand_attacks,
}


def _as_attack(member: object) -> object:
    """Hydra puts instantiated members into a list config unless the node says ``_convert_: all``,
    and OmegaConf turns the (dataclass) attacks there into typed config nodes: turn them back."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(member):
        member = OmegaConf.to_object(member)
    return member


@dataclass
class Ensemble(BoundedAttack):
    """Per sample the worst case over the members: those of ``version`` (:data:`VERSIONS`; null:
    ``standard``) or, with ``version: custom``, the list ``attacks``.

    The members attack the ensemble's goal at the ensemble's budget. A bounded member's
    ``eps`` is replaced by the ensemble's (in YAML the members carry a placeholder ``eps: 0.0``),
    at construction and in :meth:`with_eps` for every budget of the curve. A minimum-norm member
    (FAB-T, say; ``eps: null``) runs at the budget (its ``perturb_at_budget``: FAB stops searching
    a sample once within the budget, as in AutoAttack) and counts only within
    it: its points are projected into the eps-ball before the model judges them, so a
    perturbation found beyond eps is no success at that budget. Every member's ``norm`` must be
    the ensemble's, and ``target`` is set on the ensemble, never on a member. Members run in
    order, each on the samples the earlier ones did not fool; a sample keeps the point of the
    first member that fooled it, else the member output with the highest loss (cross-entropy,
    as :meth:`Goal.loss`). Threat-model attacks (rotations, patches) cannot be members.

    :meth:`fooled_by` and :attr:`AttackResult.fooled_by` say which member fooled each sample;
    the curve gets the robust accuracy after each member (:meth:`curve_fields`), as
    AutoAttack's log shows it.

    ``attacks`` given with ``version`` null (from Python) is ``custom``; ``attacks``, when set,
    are the members whatever ``version`` names (a copy of a standard ensemble with stronger
    members, made by the audit, keeps its name).
    """

    name = "ensemble"

    version: str | None = None
    attacks: list[Attack] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._fooled_by: torch.Tensor | None = None  # set by perturb for __call__
        if self.version is None:
            self.version = "standard" if self.attacks is None else "custom"
        Choice((*VERSIONS, "custom"), "unknown version").check("version", self.version)
        if self.attacks is None:
            if self.version == "custom":
                raise InvalidValue("attacks", "version custom runs the list attacks: give the members (or choose "
                                              f"a version: {', '.join(VERSIONS)})")
            members = VERSIONS[self.version](self.eps, self.norm)
        else:
            members = list(self.attacks)
        if not members:
            raise InvalidValue("attacks", "needs at least one attack (or null for the members of the version)")
        for i, member in enumerate(members):
            member = members[i] = _as_attack(member)
            if not isinstance(member, Attack):
                raise InvalidValue(f"attacks.{i}", f"must be an attack (a node with _target_), got {member!r}")
            if not isinstance(member, (BoundedAttack, MinimumNormAttack)):
                raise InvalidValue(f"attacks.{i}", f"{member.label} is not an Lp attack; an ensemble needs bounded "
                                                   "or minimum-norm attacks")
            if member.norm != self.norm:
                raise InvalidValue(
                    f"attacks.{i}.norm",
                    f"{member.label} uses {norm_name(member.norm)} but the ensemble {norm_name(self.norm)}; all must agree",
                )
            if member.target is not None:
                raise InvalidValue(f"attacks.{i}.target", "members attack the ensemble's goal; set target on the ensemble")
            if self.target is not None and not member.targetable:
                raise InvalidValue(f"attacks.{i}", f"{member.label} is untargeted but the ensemble has a target")
        self.attacks = [member.with_eps(self.eps) for member in members]

    def with_eps(self, eps: float) -> "Ensemble":
        """A copy at budget ``eps``, every member included."""
        return dataclasses.replace(self, eps=eps, attacks=[member.with_eps(eps) for member in self.attacks])

    def with_training_loss(self, name: str) -> "Ensemble":
        """A copy whose members' ``loss: train`` names the run's training loss ``name``."""
        return dataclasses.replace(self, attacks=[member.with_training_loss(name) for member in self.attacks])

    def _each_member(self, check, *args) -> None:
        for i, member in enumerate(self.attacks):
            with keyed(f"attacks.{i}", error=InvalidValue):
                getattr(member, check)(*args)

    def check_classes(self, num_classes: int) -> None:
        super().check_classes(num_classes)
        self._each_member("check_classes", num_classes)

    def check_model(self, model: nn.Module, in_shape: tuple[int, ...]) -> None:
        super().check_model(model, in_shape)
        self._each_member("check_model", model, in_shape)

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: Bounds) -> None:
        for member in self.attacks:
            member.prepare(model, x, y, bounds)

    def artifacts(self) -> dict[str, torch.Tensor]:
        return {f"{i}-{name}": image for i, member in enumerate(self.attacks) for name, image in member.artifacts().items()}

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        worst, self._fooled_by = self._cascade(model, x, goal, bounds)
        return worst.result()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bounds: Bounds = (0.0, 1.0)) -> AttackResult:
        """:meth:`Attack.__call__`, with ``fooled_by``: per sample the index in ``attacks`` of the
        member that first reached the goal (-1: none did; at ``eps = 0`` none runs)."""
        self._fooled_by = None
        result = super().__call__(model, x, y, bounds=bounds)
        fooled_by, self._fooled_by = self._fooled_by, None
        if fooled_by is None:
            fooled_by = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        result.fooled_by = fooled_by
        return result

    def _cascade(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> tuple[WorstCase, torch.Tensor]:
        """The worst case per sample and the index of the member that fooled it (-1: none)."""
        worst = WorstCase(x)
        fooled_by = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        for i, member in enumerate(self.attacks):
            rows = worst.unreached()
            if len(rows) == 0:
                break
            member_goal = goal.subset(rows)
            x_adv, logits = self._run_member(member, model, x[rows], member_goal, bounds)
            reached = member_goal.reached(logits)
            worst.update(rows, x_adv, member_goal.loss(logits), reached, logits)
            fooled_by[rows[reached]] = i
        return worst, fooled_by

    def _run_member(self, member: Attack, model: nn.Module, x: torch.Tensor, goal: Goal,
                    bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        """A member's points and logits at the ensemble's budget. A bounded member runs as it is
        (:meth:`Attack.run`, its budget the ensemble's); a minimum-norm one searches at the budget
        (:meth:`~MinimumNormAttack.perturb_at_budget`) and its points are projected
        into the eps-ball (and the bounds) before the model judges them: beyond eps, a point is
        no success at this budget."""
        if not isinstance(member, MinimumNormAttack):
            return member.run(model, x, goal, bounds)
        with torch.enable_grad():
            found = member.perturb_at_budget(model, x, goal, bounds, self.eps)
        found = (found[0] if isinstance(found, tuple) else found).detach()
        x_adv = (x + project(found - x, self.eps, self.norm)).clamp(*bounds)
        check_adversarial(x, x_adv, self.eps, self.norm, bounds, attack=member.label)
        with torch.no_grad():
            return x_adv, model(x_adv)

    @property
    def member_labels(self) -> list[str]:
        return [member.label for member in self.attacks]

    def curve_fields(self, result: AttackResult, eligible: torch.Tensor) -> dict[str, float]:
        """``robust_after_<member label>`` per member (a repeated label numbered ``_2``, ``_3``, ...):
        the share of all samples that are eligible (correctly classified, untargeted) and that none
        of the members up to this one fooled, AutoAttack's "robust accuracy after" each attack;
        the last equals ``robust_accuracy`` of an untargeted ensemble. None without ``fooled_by``."""
        if result.fooled_by is None:
            return {}
        n = len(eligible)
        fields, seen = {}, {}
        for i, member in enumerate(self.attacks):
            seen[member.label] = seen.get(member.label, 0) + 1
            column = f"robust_after_{member.label}" + (f"_{seen[member.label]}" if seen[member.label] > 1 else "")
            fooled = (result.fooled_by >= 0) & (result.fooled_by <= i)
            fields[column] = int((eligible & ~fooled).sum()) / n if n else math.nan
        return fields

    def fooled_by(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
        """Run the ensemble on ``(x, y)`` and return, per sample, the index in ``attacks`` of the
        member that first reached the goal (-1: none did; at ``eps = 0`` none runs)."""
        return self(model, x, y, bounds=bounds).fooled_by
