"""The attack contract: ``attack(model, x, y) -> AttackResult``.

Every attack runs on a whole batch with the model in eval mode (restored afterwards),
takes gradients with respect to the input only (the parameters' ``.grad`` is never
touched), and its output is checked: finite, inside the data bounds, within the budget.

Every attack is of one of three kinds, a class it derives from; the kind says how the
evaluation, the audit, the figures and the certification read the attack, so that a new
kind of attack touches this module only:

* :class:`BoundedAttack` (FGSM, PGD, ...) searches the ball of radius ``eps`` in ``norm``;
  the evaluation runs it once per budget of the curve (:meth:`Attack.with_eps`);
* :class:`MinimumNormAttack` (DeepFool, C&W, ...) looks for the smallest perturbation that
  reaches the goal and ignores ``eps``; one run gives the whole curve, read off its norms;
* :class:`ThreatModelAttack` (rotations, patches) is not bounded by an Lp ball: the norm of
  its change is reported but not checked against ``eps``, and the evaluation runs it once
  (one row, ``eps`` NaN).

Attacks attack the labels they are given (never the model's predictions). With
``target`` set they are targeted: a fixed class, ``"random"`` (a random other class per
sample) or ``"least_likely"`` (the class with the lowest clean logit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks import objectives
from advrun.attacks.norms import lp_norm, norm_field, norm_name
from advrun.attacks.objectives import largest_other_logit
from advrun.errors import AttackCheckError, Choice, InvalidValue, Number, require_int, shown

if TYPE_CHECKING:
    import pandas as pd

Bounds = tuple[float, float]
TARGET_MODES = ("random", "least_likely")
#: Columns of the curve a minimum-norm attack adds: quantiles of its minimal norms.
NORM_QUANTILES = {f"norm_q{int(100 * q)}": q for q in (0.1, 0.25, 0.5, 0.75, 0.9)}


@dataclass
class AttackResult:
    """What an attack returns for a batch of ``n`` inputs.

    ``x_adv``: the adversarial inputs (same shape as ``x``); ``success``: per sample, the
    goal is reached (untargeted: the model's label differs from ``y``; targeted: it equals
    the target); ``norms``: per-sample Lp norm of ``x_adv - x`` in the attack's norm;
    ``predictions``: the model's labels for ``x_adv``; ``targets``: the target labels of a
    targeted attack, else None.  Where a minimum-norm attack fails, ``x_adv`` is ``x``.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    predictions: torch.Tensor
    targets: torch.Tensor | None = None
    #: An ensemble's: per sample, the index of the member that first reached the goal (-1: none).
    fooled_by: torch.Tensor | None = None
    #: The model's labels for the clean inputs, where the attack's curve fields compare with them
    #: (a universal perturbation's fooling rate); else None.
    clean_predictions: torch.Tensor | None = None


@dataclass
class Goal:
    """What an attack tries to reach on a batch: leave ``labels`` (untargeted) or reach them
    (targeted). ``source`` holds the true labels (of a targeted goal: the labels the targets
    were chosen against; None: ``labels``), which targeted losses such as DLR-T need."""

    labels: torch.Tensor
    targeted: bool = False
    source: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = self.labels

    def reached(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample bool: the decision on these logits reaches the goal."""
        predictions = logits.argmax(dim=1)
        return predictions == self.labels if self.targeted else predictions != self.labels

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy loss to maximise: ``CE(y)`` untargeted, ``-CE(target)`` targeted."""
        ce = F.cross_entropy(logits, self.labels, reduction="none")
        return -ce if self.targeted else ce

    def margin(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample logit margin towards the goal, > 0 exactly when the goal is reached:
        ``Z_t - max_{j != t} Z_j`` (targeted), ``max_{j != y} Z_j - Z_y`` (untargeted)."""
        own = logits.gather(1, self.labels[:, None]).squeeze(1)
        other = largest_other_logit(logits, self.labels)
        return own - other if self.targeted else other - own

    def subset(self, index: torch.Tensor) -> "Goal":
        return Goal(self.labels[index], self.targeted, self.source[index])


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and give each its own mode back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def input_gradient(loss_fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``loss_fn(x).sum()`` with respect to ``x`` alone, and the per-sample losses.

    ``torch.autograd.grad`` differentiates only with respect to ``x``: parameter
    gradients are neither computed into ``.grad`` nor accumulated.
    """
    x = x.detach().requires_grad_(True)
    losses = loss_fn(x)
    (grad,) = torch.autograd.grad(losses.sum(), x)
    return grad, losses.detach()


def choose_targets(mode: int | str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Target labels: a fixed class, a random class other than ``y``, or the least likely class."""
    k = logits.shape[1]
    if mode == "random":
        offset = torch.randint(1, k, y.shape, device=y.device)
        return (y + offset) % k
    if mode == "least_likely":
        return logits.argmin(dim=1)
    return torch.full_like(y, int(mode))


@dataclass
class Attack:
    """Base class. Subclasses derive from one of its kinds (:class:`BoundedAttack`,
    :class:`MinimumNormAttack`, :class:`ThreatModelAttack`), set ``name`` and implement
    :meth:`perturb` on a batch.

    ``eps`` is the perturbation budget in the attack's ``norm`` (``"inf"``, ``2`` or ``1``);
    ``target`` makes the attack targeted (see the module docstring).
    """

    name: ClassVar[str] = "attack"
    #: Norms the attack supports.
    norms: ClassVar[tuple[float, ...]] = (math.inf, 2.0, 1.0)
    #: Whether the attack can be targeted.
    targetable: ClassVar[bool] = True
    #: How the evaluation audit (:mod:`advrun.audit`) checks this kind of attack: per check,
    #: the form it takes (``"standard"`` where absent), or ``"n/a: <reason>"`` where it cannot
    #: apply (``{label}`` in the reason stands for the attack's label).
    audit_rules: ClassVar[Mapping[str, str]] = {}
    #: Whether ``eps`` may be null or infinite (an attack that ignores it); null becomes inf.
    budget_optional: ClassVar[bool] = False
    #: Whether the attack follows the model's input gradients (:meth:`gradient`), so that
    #: expectation over transformation (``eot_samples``) applies to it.
    gradient_based: ClassVar[bool] = False
    #: The values of the attack's ``loss`` field (:mod:`advrun.attacks.objectives`; empty: no such field).
    losses: ClassVar[tuple[str, ...]] = ()

    eps: float = 0.1
    norm: float | str = "inf"
    target: int | str | None = None
    #: Expectation over transformation (Athalye et al. 2018): every gradient is the mean over
    #: this many forward and backward passes, for models that are random at test time.
    eot_samples: int = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        flags = sorted({"minimum_norm", "lp_bounded"} & set(vars(cls)))
        if flags:
            raise TypeError(f"{cls.__name__}: the class flag {flags[0]!r} is gone; derive from the kind of attack "
                            "instead (BoundedAttack, MinimumNormAttack or ThreatModelAttack)")

    def __post_init__(self) -> None:
        if not isinstance(self, KINDS):
            raise TypeError(f"{type(self).__name__} must derive from a kind of attack: "
                            f"{', '.join(kind.__name__ for kind in KINDS)}")
        self.norm = norm_field(self.norm, self.norms, self.name)
        if self.eps is None and self.budget_optional:
            self.eps = math.inf
        Number(0, what="a number >= 0").check("eps", self.eps)  # and at most errors.LARGEST, or infinite
        if not self.budget_optional and not math.isfinite(self.eps):
            raise InvalidValue("eps", f"must be finite for a bounded attack, got {shown(self.eps)}")
        self.eps = float(self.eps)
        if self.target is not None:
            if not self.targetable:
                raise InvalidValue("target", f"{self.name} is untargeted; leave target null")
            if self.target not in TARGET_MODES and not Number(0, integer=True).holds(self.target):
                raise InvalidValue("target", f"must be null, a class index, 'random' or 'least_likely', "
                                             f"got {shown(self.target)}")
        require_int("eot_samples", self.eot_samples, minimum=1)
        if self.eot_samples > 1 and not self.gradient_based:
            raise InvalidValue("eot_samples", f"{self.name} takes no gradients; expectation over transformation "
                                              "applies to gradient attacks (keep eot_samples 1)")
        if self.losses:
            Choice(self.losses, "unknown loss").check("loss", self.loss)

    @property
    def label(self) -> str:
        """Short name for tables and plots, e.g. ``pgd-linf``."""
        return f"{self.name}-{norm_name(self.norm)}"

    def with_eps(self, eps: float) -> "Attack":
        """A copy of this attack with another budget (a minimum-norm attack is returned as is)."""
        return dataclasses.replace(self, eps=eps)

    def with_training_loss(self, name: str) -> "Attack":
        """This attack with ``loss: train`` resolved to the objective of the run's training loss
        ``name`` (``train.loss``, :data:`~advrun.attacks.objectives.TRAINING`); else itself."""
        if getattr(self, "loss", None) != "train":
            return self
        return dataclasses.replace(self, loss=objectives.TRAINING[name])

    def objective(self, goal: "Goal", logits: torch.Tensor) -> torch.Tensor:
        """Per-sample value of the attack's ``loss`` towards ``goal`` (cross-entropy without one)."""
        return objectives.objective(getattr(self, "loss", "ce"), goal, logits)

    def gradient(
        self, model: nn.Module, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(grad, value, logits)``: the gradient with respect to ``x`` alone of ``objective(model(x))``,
        that value and the logits, each the mean over ``eot_samples`` forward and backward passes
        (expectation over transformation; one pass by default).

        ``objective`` maps the logits to one value per sample (shape ``[n]``: ``grad`` has the shape
        of ``x``) or to ``m`` values per sample (``[n, m]``: ``grad`` is ``[n, m, *x.shape[1:]]``,
        the Jacobian rows). Parameter gradients are neither computed into ``.grad`` nor accumulated.
        """
        grad = value = logits = None
        for _ in range(self.eot_samples):
            point = x.detach().requires_grad_(True)
            out = model(point)
            v = objective(out)
            if v.dim() == 1:
                (g,) = torch.autograd.grad(v.sum(), point)
            else:
                g = torch.stack([torch.autograd.grad(v[:, j].sum(), point, retain_graph=j < v.shape[1] - 1)[0]
                                 for j in range(v.shape[1])], dim=1)
            grad = g if grad is None else grad + g
            value = v.detach() if value is None else value + v.detach()
            logits = out.detach() if logits is None else logits + out.detach()
        k = self.eot_samples
        return (grad, value, logits) if k == 1 else (grad / k, value / k, logits / k)

    # --- what the kind of attack says; the kinds below implement or override these ----------

    @property
    def contract_budget(self) -> float:
        """The largest perturbation norm :meth:`run` accepts (inf: not checked)."""
        raise NotImplementedError

    def curve_runs(self, epsilons: Sequence[float]) -> list[tuple["Attack", list[float]]]:
        """How a curve over ``epsilons`` is measured: the attacks to run, each with the budgets
        whose rows are read off its result."""
        raise NotImplementedError

    def within_budget(self, norms: torch.Tensor, eps: float) -> torch.Tensor:
        """Per sample, whether a perturbation of norm ``norms`` counts at budget ``eps``."""
        return norms <= eps * (1 + 1e-5) + 1e-7

    def curve_fields(self, result: AttackResult, eligible: torch.Tensor) -> dict[str, float]:
        """Columns of a curve row beyond the counts (``eligible``: the samples the success rate counts)."""
        return {}

    def sample_budget(self, budgets: Sequence[float]) -> float | None:
        """The budget at which the per-sample results (``samples.csv``) of one run serving the
        curve's ``budgets`` are judged; None where the run gives minimal norms, judged at no budget."""
        raise NotImplementedError

    @property
    def member_labels(self) -> list[str] | None:
        """The labels of the members that :attr:`AttackResult.fooled_by` indexes (an ensemble's);
        None for a single attack."""
        return None

    def sample_columns(self, result: AttackResult) -> dict[str, torch.Tensor]:
        """Per-sample columns the evaluation keeps (``norms.csv``), none for most attacks."""
        return {}

    @property
    def headline_eps(self) -> float | None:
        """The budget the run's headline numbers are at (None: the attack has no budget)."""
        return self.eps

    def headline_row(self, rows: pd.DataFrame) -> pd.Series:
        """The row of the curve ``rows`` (a pandas table of this attack's rows) at the headline."""
        return rows.loc[rows["eps"] == self.headline_eps].iloc[0]

    def describe_budget(self) -> str:
        """The budget as a figure's title states it, e.g. ``eps 0.1``."""
        raise NotImplementedError

    def illustration_eps(self, default: float | None) -> float | None:
        """The budget at which a figure draws an optimal perturbation (``default``: the data set's
        budget for the attack's norm); None where no Lp budget applies."""
        raise NotImplementedError

    @property
    def certificate_norm(self) -> float | None:
        """The norm of the ball a certificate of robustness bounds this attack in (None: no ball)."""
        return self.norm

    def check_classes(self, num_classes: int) -> None:
        """Raise :class:`InvalidValue` if the attack cannot work with ``num_classes`` classes."""
        if isinstance(self.target, int) and not isinstance(self.target, bool) and self.target >= num_classes:
            raise InvalidValue("target", f"class {self.target} does not exist ({num_classes} classes)")
        if self.losses:
            objectives.check_classes(self.loss, num_classes, targeted=self.target is not None)

    def check_model(self, model: nn.Module, in_shape: tuple[int, ...]) -> None:
        """Raise :class:`InvalidValue` if the attack cannot attack this model or input shape
        (an exact linear attack on a non-linear model, a patch on vector inputs). Called by
        the runner before training, so such a mistake costs no time."""

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: Bounds) -> None:
        """Fit whatever the attack learns from training data before it is evaluated (a universal
        patch, say). The runner calls it once with the training set; most attacks need nothing."""

    def artifacts(self) -> dict[str, torch.Tensor]:
        """Images worth saving with the run (e.g. ``{"patch": tensor CxHxW in [0, 1]}``)."""
        return {}

    def perturb(
        self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Adversarial inputs for ``x`` (model already in eval mode, gradients enabled).

        An attack that already has the model's logits at the inputs it returns may return
        ``(x_adv, logits)``, which saves the forward pass that would compute them again.
        """
        raise NotImplementedError

    def goal_for(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Goal:
        """The goal on a batch: leave the labels ``y``, or reach the targets this attack picks."""
        if self.target is None:
            return Goal(y)
        with torch.no_grad():
            return Goal(choose_targets(self.target, model(x), y), targeted=True, source=y)

    def run(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`perturb` plus the contract: the output checked (finite, in bounds, within the
        budget), a minimum-norm attack's failures reverted to ``x``; returns the adversarial
        inputs and the model's logits at them. The model must be in eval mode."""
        budget = self.contract_budget
        if budget == 0 or len(x) == 0:
            x_adv, logits = x.clone(), None
        else:
            with torch.enable_grad():
                x_adv = self.perturb(model, x, goal, bounds)
            x_adv, logits = x_adv if isinstance(x_adv, tuple) else (x_adv, None)
            x_adv = x_adv.detach()
        check_adversarial(x, x_adv, budget, self.norm, bounds, attack=self.label)
        if logits is None or not torch.isfinite(logits).all():
            with torch.no_grad():
                logits = model(x_adv)
        return x_adv, logits.detach()

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bounds: Bounds = (0.0, 1.0)
    ) -> AttackResult:
        """Attack the labels ``y`` (not the model's predictions) of the inputs ``x``."""
        x = x.detach()
        y = y.detach()
        with eval_mode(model):
            goal = self.goal_for(model, x, y)
            x_adv, logits = self.run(model, x, goal, bounds)
        return AttackResult(
            x_adv=x_adv,
            success=goal.reached(logits),
            norms=lp_norm(x_adv - x, self.norm),
            predictions=logits.argmax(dim=1),
            targets=goal.labels if goal.targeted else None,
        )


@dataclass
class BoundedAttack(Attack):
    """An attack that searches the ball of radius ``eps`` in ``norm`` (FGSM, PGD, ...): run once
    per budget of the curve, its output checked to lie within ``eps``."""

    @property
    def contract_budget(self) -> float:
        return self.eps

    def curve_runs(self, epsilons: Sequence[float]) -> list[tuple[Attack, list[float]]]:
        return [(self.with_eps(float(eps)), [eps]) for eps in epsilons]

    def sample_budget(self, budgets: Sequence[float]) -> float:
        return float(budgets[0])

    def describe_budget(self) -> str:
        return f"eps {self.eps:g}"

    def illustration_eps(self, default: float | None) -> float | None:
        return self.eps or None


@dataclass
class MinimumNormAttack(Attack):
    """An attack that looks for the smallest perturbation reaching the goal and ignores ``eps``
    (DeepFool, C&W, ...): one run gives the whole curve, a sample counting as fooled at budget
    eps when its minimal norm is at most eps; ``eps`` (null: inf) is the headline budget only.
    Where it fails it returns ``x`` itself (:meth:`run`)."""

    budget_optional = True
    audit_rules = {
        "monotone": "n/a: {label} is minimum-norm: its curve is read off one run's norms, non-decreasing by "
                    "construction",
        "large_budget": "unbounded",
        "more_iterations": "n/a: {label} is minimum-norm: compare its norms with more steps by hand",
    }

    @property
    def contract_budget(self) -> float:
        return math.inf

    def with_eps(self, eps: float) -> "MinimumNormAttack":
        return self

    def curve_runs(self, epsilons: Sequence[float]) -> list[tuple[Attack, list[float]]]:
        return [(self, list(epsilons))]

    def sample_budget(self, budgets: Sequence[float]) -> None:
        return None

    def curve_fields(self, result: AttackResult, eligible: torch.Tensor) -> dict[str, float]:
        """The quantiles :data:`NORM_QUANTILES` of the minimal norms of the eligible samples it fooled."""
        norms = result.norms[eligible & result.success].double()
        return {column: norms.quantile(q).item() if len(norms) else math.nan for column, q in NORM_QUANTILES.items()}

    def sample_columns(self, result: AttackResult) -> dict[str, torch.Tensor]:
        """Success and minimal norm per sample (inf where the attack failed)."""
        return {"success": result.success, "norm": torch.where(result.success, result.norms, torch.inf)}

    def describe_budget(self) -> str:
        return "its minimal perturbation"

    def perturb_at_budget(
        self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds, eps: float
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """:meth:`perturb` as a member of a bounded ensemble at budget ``eps`` (the ensemble projects
        the points into the eps-ball): the same search unless the attack can use the budget (FAB
        stops searching a sample once it is within eps)."""
        return self.perturb(model, x, goal, bounds)

    def illustration_eps(self, default: float | None) -> float | None:
        return default

    def run(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`Attack.run`, with ``x`` itself (never another point) where the goal is not reached.
        Checked on the batch the evaluation classifies: a point found in a smaller batch can round
        to the other side of the boundary in this one."""
        x_adv, logits = super().run(model, x, goal, bounds)
        failed = ~goal.reached(logits)
        if failed.any():
            x_adv = torch.where(failed.view((-1,) + (1,) * (x.dim() - 1)), x, x_adv)
            with torch.no_grad():
                logits = torch.where(failed[:, None], model(x), logits).detach()
        return x_adv, logits


_NOT_LP = "n/a: {label} is not an Lp attack"


@dataclass
class ThreatModelAttack(Attack):
    """An attack outside the Lp threat model (rotations, patches): the norm of its change is
    reported but not bounded by ``eps``; run once, one row of the curve with ``eps`` NaN, no
    headline budget, nothing to certify, and the audit's comparisons at a budget do not apply."""

    audit_rules = {
        "single_step": f"{_NOT_LP} (no budget to compare at)",
        "monotone": f"{_NOT_LP}: one row, no budgets",
        "large_budget": _NOT_LP,
        "more_iterations": f"{_NOT_LP} (no budget to compare at)",
        "black_box": f"{_NOT_LP} (no budget to compare at)",
    }

    @property
    def contract_budget(self) -> float:
        return math.inf

    def curve_runs(self, epsilons: Sequence[float]) -> list[tuple[Attack, list[float]]]:
        return [(self, [math.nan])]

    def sample_budget(self, budgets: Sequence[float]) -> float:
        return math.nan

    def within_budget(self, norms: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.ones_like(norms, dtype=torch.bool)

    @property
    def headline_eps(self) -> None:
        return None

    def headline_row(self, rows: pd.DataFrame) -> pd.Series:
        return rows.iloc[0]

    def describe_budget(self) -> str:
        return "its threat model"

    def illustration_eps(self, default: float | None) -> None:
        return None

    @property
    def certificate_norm(self) -> None:
        return None


#: The kinds of attack; every attack derives from one.
KINDS = (BoundedAttack, MinimumNormAttack, ThreatModelAttack)


class WorstCase:
    """Per sample of a batch, the point an attack returns: the first point offered that reaches
    the goal, else the one with the highest loss (the clean input until a point is offered),
    with the model's logits there (NaN until a point is offered)."""

    def __init__(self, x: torch.Tensor):
        self.x = x.detach().clone()
        self.loss = torch.full((len(x),), -torch.inf, device=x.device, dtype=x.dtype)
        self.reached = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.logits: torch.Tensor | None = None

    def update(
        self, rows: torch.Tensor, x: torch.Tensor, loss: torch.Tensor, reached: torch.Tensor, logits: torch.Tensor
    ) -> None:
        """Offer points ``x`` (losses, goal reached, logits) for the samples ``rows`` of the batch."""
        if self.logits is None:
            self.logits = torch.full((len(self.x), logits.shape[1]), torch.nan, device=logits.device, dtype=logits.dtype)
        better = ~self.reached[rows] & (reached | (loss > self.loss[rows]))
        index = rows[better]
        self.x[index] = x[better].detach()
        self.loss[index] = loss[better].detach()
        self.reached[index] = reached[better]
        self.logits[index] = logits[better].detach()

    def unreached(self) -> torch.Tensor:
        """Rows whose goal no point has reached yet."""
        return (~self.reached).nonzero().squeeze(1)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(points, logits)`` as :meth:`Attack.perturb` may return them."""
        return self.x, self.logits


def least_factor(model: nn.Module, goal: Goal, x: torch.Tensor, delta: torch.Tensor, steps: int,
                 top: float = 1.0, bounds: Bounds | None = None) -> torch.Tensor:
    """Per sample, the least factor ``s`` in ``(0, top]`` that ``steps`` bisection steps find for
    which ``x + s delta`` (clipped to ``bounds`` if given) still reaches ``goal``: forward passes
    only. A factor below ``top`` was checked on the model; ``top`` itself is returned unchecked
    where no smaller one reached the goal."""
    low = torch.zeros(len(x), device=x.device, dtype=x.dtype)
    high = torch.full_like(low, top)
    shape = (-1,) + (1,) * (x.dim() - 1)
    with torch.no_grad():
        for _ in range(steps):
            middle = (low + high) / 2
            point = x + middle.view(shape) * delta
            reached = goal.reached(model(point if bounds is None else point.clamp(*bounds)))
            high, low = torch.where(reached, middle, high), torch.where(reached, low, middle)
    return high


def check_adversarial(
    x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: float, bounds: Bounds, *, attack: str = "attack"
) -> None:
    """Raise :class:`AttackCheckError` unless ``x_adv`` is finite, in bounds and within ``eps``."""
    if x_adv.shape != x.shape:
        raise AttackCheckError(f"{attack}: output shape {tuple(x_adv.shape)} != input shape {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackCheckError(f"{attack}: non-finite values in the adversarial inputs")
    lo, hi = bounds
    tol = 1e-6 * max(1.0, abs(lo), abs(hi))
    if len(x) and (x_adv.min() < lo - tol or x_adv.max() > hi + tol):
        raise AttackCheckError(
            f"{attack}: adversarial inputs leave the bounds [{lo}, {hi}] "
            f"(min {x_adv.min().item():.6g}, max {x_adv.max().item():.6g})"
        )
    if math.isfinite(eps) and len(x):
        largest = lp_norm(x_adv - x, norm).max().item()
        if largest > eps * (1 + 1e-5) + 1e-6:
            raise AttackCheckError(f"{attack}: perturbation norm {largest:.6g} exceeds eps {eps:.6g}")
