"""An ensemble of attacks, per sample the worst case, in the manner of AutoAttack (Croce & Hein
2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", Sect. 5): the attacks run in turn, each on the samples no earlier one has fooled, so
a sample counts as robust only if it survives every attack."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.apgd import APGD
from advrun.attacks.base import Attack, AttackResult, BoundedAttack, Bounds, Goal, WorstCase
from advrun.attacks.norms import norm_name
from advrun.attacks.square import Square
from advrun.errors import InvalidValue, keyed


def standard_attacks(eps: float, norm: float) -> list[Attack]:
    """AutoAttack's standard set without FAB-T: APGD-CE, APGD-T over 9 target classes, Square
    with 5,000 queries (100 iterations and one run each for the APGDs)."""
    return [
        APGD(eps=eps, norm=norm, loss="ce"),
        APGD(eps=eps, norm=norm, loss="dlr_targeted", n_target_classes=9),
        Square(eps=eps, norm=norm, n_queries=5000),
    ]


def _as_attack(member: object) -> object:
    """Hydra puts instantiated members into a list config unless the node says ``_convert_: all``,
    and OmegaConf turns the (dataclass) attacks there into typed config nodes: turn them back."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(member):
        member = OmegaConf.to_object(member)
    return member


@dataclass
class Ensemble(BoundedAttack):
    """Per sample the worst case over ``attacks`` (null: :func:`standard_attacks`).

    The members attack the ensemble's goal at the ensemble's budget: each member's ``eps``
    is replaced by the ensemble's (in YAML the members carry a placeholder ``eps: 0.0``), at
    construction and in :meth:`with_eps` for every budget of the curve; their ``norm`` must
    be the ensemble's, and ``target`` is set on the ensemble, never on a member. Members run
    in order, each on the samples the earlier ones did not fool; a sample keeps the point of
    the first member that fooled it, else the member output with the highest loss
    (cross-entropy, as :meth:`Goal.loss`). Members must be bounded attacks (:class:`BoundedAttack`,
    no minimum-norm or threat-model attacks). :meth:`fooled_by` says which member fooled each sample.
    """

    name = "ensemble"

    attacks: list[Attack] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._fooled_by: torch.Tensor | None = None  # set by perturb for __call__
        members = standard_attacks(self.eps, self.norm) if self.attacks is None else list(self.attacks)
        if not members:
            raise InvalidValue("attacks", "needs at least one attack (or null for the standard set)")
        for i, member in enumerate(members):
            member = members[i] = _as_attack(member)
            if not isinstance(member, Attack):
                raise InvalidValue(f"attacks.{i}", f"must be an attack (a node with _target_), got {member!r}")
            if not isinstance(member, BoundedAttack):
                raise InvalidValue(f"attacks.{i}", f"{member.label} is not a bounded Lp attack; an ensemble needs those")
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
            x_adv, logits = member.run(model, x[rows], member_goal, bounds)
            reached = member_goal.reached(logits)
            worst.update(rows, x_adv, member_goal.loss(logits), reached, logits)
            fooled_by[rows[reached]] = i
        return worst, fooled_by

    def fooled_by(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
        """Run the ensemble on ``(x, y)`` and return, per sample, the index in ``attacks`` of the
        member that first reached the goal (-1: none did; at ``eps = 0`` none runs)."""
        return self(model, x, y, bounds=bounds).fooled_by
