"""Transfer attacks (Papernot, McDaniel & Goodfellow 2016, "Transferability in machine learning: from
phenomena to black-box attacks using adversarial samples"): adversarial examples crafted by a
white-box attack on a *surrogate* model, then given to the *target* (the run's model), whose
gradients and outputs the crafting never sees: the black-box setting (a surrogate trained for the
target's task) and, where the surrogate was trained on other data of the task, the no-box one.

The crafting attack (``craft``) is any bounded or minimum-norm attack of advrun. The transfer
attack is of the crafting attack's kind (:mod:`advrun.attacks.base`):

* a bounded crafting attack makes a bounded transfer attack: per budget of the curve, the points
  crafted on the surrogate within that budget;
* a minimum-norm crafting attack makes a minimum-norm transfer attack: per sample the point it
  found on the surrogate, whose perturbation norm places the sample on the curve (a point that
  does not fool the target counts as a failure, at every budget).

Targets of a targeted attack are chosen on the surrogate; success, verdicts and robust accuracy
are always the target model's; norms are those of the crafted perturbation.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from advrun.attacks.base import Attack, BoundedAttack, Bounds, Goal, MinimumNormAttack, eval_mode
from advrun.attacks.ensemble import _as_attack
from advrun.attacks.norms import norm_name
from advrun.errors import AdvrunError, InvalidValue, keyed

_WHITE_BOX = "n/a: {label} is a transfer attack; the audit's comparisons with white-box attacks on the target do not apply"


class Transfer:
    """``Transfer(craft, surrogate, ...)`` (``attack=transfer``'s ``_target_``) builds the transfer attack of
    the crafting attack ``craft`` from the ``surrogate`` (a finished run folder, or a model given from
    Python): a :class:`BoundedTransfer` for a bounded crafting attack, a :class:`MinimumNormTransfer` for
    a minimum-norm one (see the module). ``data``: the run's data set (:class:`advrun.data.Dataset`),
    which the surrogate's must match."""

    def __new__(cls, craft: Any = None, surrogate: Any = None, eps: float | None = 0.1, norm: float | str = "inf",
                target: int | str | None = None, data: Any = None) -> TransferAttack:
        craft = _as_attack(craft)
        if not isinstance(craft, Attack):
            raise InvalidValue("craft", f"must be an attack (a node with _target_, e.g. attack@attack.craft=fgsm), "
                                        f"got {craft!r}")
        if not isinstance(craft, (BoundedAttack, MinimumNormAttack)):  # a ThreatModelAttack: rotations, patches
            raise InvalidValue("craft", f"{craft.label} is not an Lp attack; a transfer attack crafts with a bounded "
                                        "or minimum-norm attack")
        kind = BoundedTransfer if isinstance(craft, BoundedAttack) else MinimumNormTransfer
        return kind(eps=eps, norm=norm, target=target, craft=craft, surrogate=surrogate, data=data)


def transfer_of(attack: Attack, surrogate: Any) -> TransferAttack:
    """The transfer attack that crafts with ``attack`` (its budget, norm and target) on ``surrogate``."""
    return Transfer(craft=_untargeted(attack), surrogate=surrogate, eps=attack.eps, norm=attack.norm,
                    target=attack.target)


def _untargeted(attack: Attack) -> Attack:
    """A copy of ``attack`` without its target (the transfer attack holds the target)."""
    if attack.target is None:
        return attack
    untargeted = copy.copy(attack)
    untargeted.target = None
    return untargeted


@dataclass(frozen=True)
class Surrogate:
    """The surrogate model and what its run folder says of its data (None: a model given from Python)."""

    model: nn.Module
    source: str
    dataset: str | None = None
    in_shape: tuple[int, ...] | None = None
    class_names: list[str] | None = None
    bounds: tuple[float, float] | None = None


def load_surrogate(surrogate: Any) -> Surrogate:
    """The surrogate of ``attack.surrogate``: a finished run folder (loaded by
    :func:`advrun.experiment.load_run`), or an ``nn.Module`` given from Python."""
    if isinstance(surrogate, nn.Module):
        return Surrogate(surrogate, f"a {type(surrogate).__name__} given from Python")
    if not isinstance(surrogate, (str, os.PathLike)) or not str(surrogate):
        raise InvalidValue("surrogate", f"must be the folder of a finished advrun run, got {surrogate!r}")
    from advrun.experiment import load_run
    from advrun.runfolder import RunFolder

    folder = RunFolder(surrogate)
    if not folder.path.is_dir():
        raise InvalidValue("surrogate", f"{folder.path} is not a folder; give the folder of a finished advrun run")
    if not folder.finished():
        raise InvalidValue("surrogate", f"{folder.path} holds no finished run ({RunFolder.METRICS} is missing)")
    try:
        with torch.random.fork_rng(devices=[]):  # building the model draws initial weights: not from the run's stream
            run = load_run(folder.path)
    except AdvrunError as e:
        raise InvalidValue("surrogate", e.message) from None
    info = folder.json(RunFolder.MODEL_INFO) or {}
    bounds = info.get("bounds")
    return Surrogate(run.model, str(folder.path), dataset=(run.metrics or {}).get("dataset"),
                     in_shape=tuple(info["in_shape"]), class_names=info.get("class_names"),
                     bounds=tuple(bounds) if bounds else None)


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@dataclass
class TransferAttack(Attack):
    """Adversarial examples crafted by ``craft`` on ``surrogate``, judged on the model attacked
    (the target). The crafting attack's budget is the transfer attack's (in YAML it carries a
    placeholder ``eps: 0.0``), its ``norm`` must be the transfer attack's, and ``target`` is set on
    the transfer attack, never on ``craft``. ``surrogate``: a finished run folder, or a model from
    Python; ``data``: the run's data set, which the surrogate's run must have been trained on
    (name, classes, bounds). Build it with :func:`Transfer`, which picks the kind."""

    name = "transfer"
    audit_rules = {check: _WHITE_BOX for check in ("single_step", "large_budget", "more_iterations", "black_box")}

    craft: Any = None
    surrogate: Any = None
    data: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        craft = _as_attack(self.craft)
        expected = BoundedAttack if isinstance(self, BoundedAttack) else MinimumNormAttack
        if not isinstance(craft, expected):
            raise InvalidValue("craft", f"must be a {expected.__name__} for a {type(self).__name__} (build it with "
                                        f"advrun.attacks.Transfer, which picks the kind), got {craft!r}")
        if craft.norm != self.norm:
            raise InvalidValue("craft.norm", f"{craft.label} uses {norm_name(craft.norm)} but the transfer attack "
                                             f"{norm_name(self.norm)}; they must agree")
        if craft.target is not None:
            raise InvalidValue("craft.target", "set target on the transfer attack, never on the crafting attack")
        self.craft = craft.with_eps(self.eps)
        self._surrogate = load_surrogate(self.surrogate)
        if self.data is not None:
            self._check_data(self.data)
        self._memo: dict | None = None

    @property
    def label(self) -> str:
        """``transfer-<crafting attack's label>``, e.g. ``transfer-pgd-linf``."""
        return f"{self.name}-{self.craft.label}"

    @property
    def surrogate_model(self) -> nn.Module:
        return self._surrogate.model

    def _check_data(self, data: Any) -> None:
        """The surrogate's run must have been trained on the run's data set: same name, classes and bounds."""
        found, given = self._surrogate, None
        if found.dataset is not None and found.dataset != data.name:
            given = f"was trained on {found.dataset}, this run is on {data.name}"
        elif found.class_names is not None and list(found.class_names) != list(data.class_names):
            given = f"has the classes {found.class_names}, this run {list(data.class_names)}"
        elif found.bounds is not None and tuple(found.bounds) != tuple(data.bounds):
            given = f"takes inputs in {list(found.bounds)}, this run's data lie in {list(data.bounds)}"
        if given:
            raise InvalidValue("surrogate", f"the surrogate {found.source} {given}; a transfer attack needs a surrogate "
                                            "of the same data set and classes")

    def _copy(self, **changes: Any) -> TransferAttack:
        """A copy with other fields, sharing the loaded surrogate (and the memory of :meth:`remember`)."""
        changed = copy.copy(self)
        for name, value in changes.items():
            setattr(changed, name, value)
        return changed

    def with_training_loss(self, name: str) -> TransferAttack:
        """A copy whose crafting attack's ``loss: train`` names the run's training loss ``name``."""
        return self._copy(craft=self.craft.with_training_loss(name))

    def check_classes(self, num_classes: int) -> None:
        super().check_classes(num_classes)
        names = self._surrogate.class_names
        if names is not None and len(names) != num_classes:
            raise InvalidValue("surrogate", f"the surrogate {self._surrogate.source} has {len(names)} classes, this "
                                            f"run {num_classes}; a transfer attack needs a surrogate of the same classes")
        with keyed("craft", error=InvalidValue):
            self.craft.check_classes(num_classes)

    def check_model(self, model: nn.Module, in_shape: tuple[int, ...]) -> None:
        """The surrogate must take the run's inputs, and the crafting attack must be able to attack it."""
        super().check_model(model, in_shape)
        shape = self._surrogate.in_shape
        if shape is not None and tuple(shape) != tuple(in_shape):
            raise InvalidValue("surrogate", f"the surrogate {self._surrogate.source} takes inputs of shape "
                                            f"{'x'.join(map(str, shape))}, this run's are {'x'.join(map(str, in_shape))}")
        with keyed("craft", error=InvalidValue):
            self.craft.check_model(self.surrogate_model, in_shape)

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: Bounds) -> None:
        """What the crafting attack learns from training data, it learns on the surrogate."""
        self.craft.prepare(self._on(x.device), x, y, bounds)

    def artifacts(self) -> dict[str, torch.Tensor]:
        return self.craft.artifacts()

    def _on(self, device: torch.device) -> nn.Module:
        return self.surrogate_model.to(device)

    def goal_for(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Goal:
        """The goal on a batch; the targets of a targeted attack are chosen on the surrogate (the
        crafting never sees the target model's outputs)."""
        surrogate = self._on(x.device)
        with eval_mode(surrogate):
            return super().goal_for(surrogate, x, y)

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        """The points the crafting attack finds on the surrogate for ``goal`` (``model``, the target,
        is not used); remembered per inputs, goal and budget after :meth:`remember`."""
        key = None
        if self._memo is not None:
            key = (self.eps, _digest(x), _digest(goal.labels), goal.targeted, tuple(bounds))
            if key in self._memo:
                return self._memo[key]
        surrogate = self._on(x.device)
        with eval_mode(surrogate):
            x_adv, _ = self.craft.run(surrogate, x, goal, bounds)
        if key is not None:
            self._memo[key] = x_adv
        return x_adv

    def remember(self) -> TransferAttack:
        """Keep the crafted points, so that the same inputs, goal and budget given again (to another
        target model) reuse them rather than crafting again; the copies made for other budgets share
        the memory. Returns the attack."""
        self._memo = {}
        return self


@dataclass
class BoundedTransfer(TransferAttack, BoundedAttack):
    """A transfer attack whose crafting attack is bounded: per budget of the curve, the points
    crafted on the surrogate in the eps-ball."""

    def with_eps(self, eps: float) -> BoundedTransfer:
        """A copy at budget ``eps``, its crafting attack's included."""
        return self._copy(eps=float(eps), craft=self.craft.with_eps(eps))


@dataclass
class MinimumNormTransfer(TransferAttack, MinimumNormAttack):
    """A transfer attack whose crafting attack is minimum-norm: one run, per sample the point found on
    the surrogate; the sample counts as fooled at budget eps when that point fools the target and
    its perturbation norm is at most eps."""

    audit_rules = {**MinimumNormAttack.audit_rules, **TransferAttack.audit_rules,
                   "monotone": MinimumNormAttack.audit_rules["monotone"]}
