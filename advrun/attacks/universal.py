"""Universal adversarial perturbations (Moosavi-Dezfooli, Fawzi, Fawzi & Frossard 2017, "Universal
adversarial perturbations", Algorithm 1): one perturbation ``v`` with ``||v||_p <= eps`` added to
every input, fitted on training images and evaluated on the held-out ones.

Algorithm 1 passes over the training images ``x_i``; for each that ``v`` does not fool yet
(``k(x_i + v) == k(x_i)``, ``k`` the model's label) it computes the minimal extra perturbation
``dv_i`` that sends ``x_i + v`` across the decision boundary (DeepFool) and sets
``v <- P_{p, eps}(v + dv_i)``, the projection onto the Lp ball, until the fooling rate on the
training images reaches ``1 - delta`` or the passes run out.

The paper's fooling rate is the share of images whose predicted label changes when ``v`` is added,
``P(k(x + v) != k(x))``, whatever their true label; the curve reports it beside robust accuracy
(which counts the true labels, as for every attack).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from advrun.attacks.base import AttackResult, BoundedAttack, Bounds, Goal, eval_mode
from advrun.attacks.deepfool import DeepFool
from advrun.attacks.norms import project
from advrun.console import progress_bar
from advrun.errors import InvalidValue, is_number, require_int, require_non_negative, shown


def labels_of(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The model's labels for ``x`` (no gradients, in batches; the model's mode as it is)."""
    with torch.no_grad():
        return torch.cat([model(part).argmax(dim=1) for part in x.split(batch_size)])


def fooling_rate(model: nn.Module, x: torch.Tensor, v: torch.Tensor, bounds: Bounds,
                 labels: torch.Tensor | None = None) -> float:
    """The paper's fooling rate of ``v`` on ``x``: the share of inputs whose label changes when
    ``v`` is added and the result clipped to ``bounds`` (``labels``: the clean labels, if known)."""
    if len(x) == 0:
        return math.nan
    clean = labels_of(model, x) if labels is None else labels
    return (labels_of(model, (x + v).clamp(*bounds)) != clean).double().mean().item()


#: The least side, in pixels, of a perturbation in the saved image (smaller ones are enlarged).
TILE = 64


def signed_image(v: torch.Tensor) -> torch.Tensor:
    """A perturbation ``v`` (C x H x W) as an RGB image in [0, 1], scaled to its largest magnitude:
    three channels as ``0.5 + v / 2`` per channel (grey at 0); otherwise the mean over the channels,
    red where positive, blue where negative, white at 0."""
    v = v.detach().float().cpu()
    v = v / v.abs().max().clamp_min(1e-12)
    if v.shape[0] == 3:
        return 0.5 + v / 2
    a = v.mean(dim=0)
    positive, negative = a.clamp_min(0), (-a).clamp_min(0)
    return torch.stack([1 - negative, 1 - a.abs(), 1 - positive])


@dataclass
class Fit:
    """One fitted universal perturbation: ``v`` (shape ``1 x input shape``), its fooling rate on
    the training images it was fitted on, and the passes over them it took."""

    v: torch.Tensor
    train_fooling_rate: float
    passes: int


@dataclass
class Fits:
    """What :meth:`Universal.prepare` stores, shared by the attack's copies at other budgets: the
    training images and bounds, and the perturbations fitted so far, by their settings."""

    x: torch.Tensor
    bounds: Bounds
    fitted: dict[tuple, Fit] = field(default_factory=dict)


@dataclass
class Universal(BoundedAttack):
    """One universal perturbation per budget (Algorithm 1 of Moosavi-Dezfooli et al. 2017), in
    Linf or L2, untargeted.

    :meth:`prepare` keeps the training images; the perturbation for a budget is fitted the first
    time the attack runs at that budget (every budget of the curve: its own ``v``) and reused for
    every batch. Fitting uses ``train_samples`` training images (a random subset drawn with
    ``seed``; null: all), their clean labels by the model, and at most ``max_passes`` passes over
    them in a random order (``seed``). The images ``v`` does not fool are taken ``batch_size`` at a
    time: DeepFool (``steps``, ``overshoot``; the paper's form, without refinement) computes each
    one's minimal perturbation ``dv_i`` at ``clip(x_i + v)`` in parallel, and then
    ``v <- P(v + dv_i)`` is applied for each in turn (``batch_size: 1`` is the paper's loop
    exactly; a larger batch computes the ``dv_i`` of a batch at the same ``v``). Fitting stops
    once the fooling rate on the training images reaches ``1 - delta``.

    Not in the paper: after every batch the fooling rate on the training images is measured and
    the best ``v`` so far is kept, the latest of equally good ones (the last one can be worse:
    updates of images of different classes pull ``v`` in different directions), so the result
    never fools fewer training images than an earlier iterate.
    """

    name = "universal"
    gradient_based = True
    norms = (math.inf, 2.0)  # DeepFool's norms: the minimal perturbation of each step
    targetable = False
    audit_rules = {
        "single_step": "n/a: {label} is one perturbation for all inputs; a per-input gradient step is stronger "
                       "by design",
        "large_budget": "n/a: {label} is one perturbation for all inputs; even one reaching the whole box cannot "
                        "send images of every class to another class",
        "black_box": "n/a: {label} is one perturbation for all inputs; a per-input attack such as Square is "
                     "stronger by design",
    }

    norm: float | str = "inf"
    train_samples: int | None = 1000
    max_passes: int = 5
    delta: float = 0.2
    steps: int = 10
    overshoot: float = 0.02
    batch_size: int = 20
    seed: int = 0
    #: The training images and fitted perturbations (:meth:`prepare`), shared by every copy.
    fits: Fits | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_samples is not None:
            require_int("train_samples", self.train_samples, minimum=1)
        require_int("max_passes", self.max_passes, minimum=1)
        if not is_number(self.delta) or not 0 <= self.delta < 1:
            raise InvalidValue("delta", f"must be a number in [0, 1) (fitting stops at a training fooling rate "
                                        f"of 1 - delta), got {shown(self.delta)}")
        require_int("steps", self.steps, minimum=1)
        require_non_negative("overshoot", self.overshoot)
        require_int("batch_size", self.batch_size, minimum=1)
        require_int("seed", self.seed, minimum=0)

    @property
    def settings(self) -> tuple:
        """What a fitted perturbation depends on besides the model and the training images."""
        return (self.eps, self.norm, self.train_samples, self.max_passes, self.delta, self.steps,
                self.overshoot, self.batch_size, self.seed, self.eot_samples)

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: Bounds) -> None:
        """Keep the training images ``x`` (the labels ``y`` are not used: Algorithm 1 moves the
        model's own labels); earlier fits are dropped."""
        self.fits = Fits(x.detach(), (float(bounds[0]), float(bounds[1])))

    def perturbation(self, model: nn.Module) -> Fit:
        """The perturbation at this budget, fitted on the first call for these settings."""
        if self.fits is None:
            raise RuntimeError("Universal.prepare(model, x_train, y_train, bounds) must give the training images "
                               "before the attack")
        fit = self.fits.fitted.get(self.settings)
        if fit is None:
            with eval_mode(model):
                fit = self.fits.fitted[self.settings] = self._fit(model, self.fits.x, self.fits.bounds)
        return fit

    def _fit(self, model: nn.Module, x_all: torch.Tensor, bounds: Bounds) -> Fit:
        generator = torch.Generator().manual_seed(self.seed)
        n = len(x_all) if self.train_samples is None else min(self.train_samples, len(x_all))
        x = x_all[torch.randperm(len(x_all), generator=generator)[:n].to(x_all.device)]
        labels = labels_of(model, x)
        inner = DeepFool(norm=self.norm, steps=self.steps, overshoot=self.overshoot, refine_steps=0,
                         eot_samples=self.eot_samples)
        v = torch.zeros_like(x[:1])
        best = Fit(v, fooling_rate(model, x, v, bounds, labels), 0)
        rate = best.train_fooling_rate
        batches = math.ceil(n / self.batch_size)
        with progress_bar(transient=True) as bar:
            task = bar.add_task(f"fit {self.label} at eps {self.eps:g}", total=self.max_passes * batches)
            for done in range(1, self.max_passes + 1):
                if rate >= 1 - self.delta:
                    break
                for batch in torch.randperm(n, generator=generator).to(x.device).split(self.batch_size):
                    bar.advance(task)
                    point = (x[batch] + v).clamp(*bounds)
                    keep = labels_of(model, point) == labels[batch]  # not fooled by v yet
                    if not keep.any():
                        continue
                    point = point[keep]
                    found = inner(model, point, labels[batch][keep], bounds=bounds)
                    steps = (found.x_adv - point)[found.success]
                    for dv in steps:
                        v = project(v + dv, self.eps, self.norm)
                    rate = fooling_rate(model, x, v, bounds, labels)
                    if rate >= best.train_fooling_rate:  # on a tie the later, further fitted v
                        best = Fit(v, rate, done)
                    if rate >= 1 - self.delta:
                        break
        return best

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        v = self.perturbation(model).v.to(x.device, x.dtype)
        with torch.no_grad():
            return (x + v).clamp(*bounds)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 bounds: Bounds = (0.0, 1.0)) -> AttackResult:
        """:meth:`Attack.__call__`, with the model's clean labels, which the fooling rate compares with."""
        result = super().__call__(model, x, y, bounds=bounds)
        with eval_mode(model):
            result.clean_predictions = labels_of(model, x.detach())
        return result

    def curve_fields(self, result: AttackResult, eligible: torch.Tensor) -> dict[str, float]:
        """``fooling_rate``: the share of all evaluated inputs whose label changes under ``v`` (the
        paper's measure; robust accuracy counts the true labels); ``train_fooling_rate``: the same
        on the training images ``v`` was fitted on (0 at budget 0, NaN if not fitted)."""
        fields = {}
        if result.clean_predictions is not None and len(result.predictions):
            fields["fooling_rate"] = (result.predictions != result.clean_predictions).double().mean().item()
        fit = self.fits.fitted.get(self.settings) if self.fits is not None else None
        fields["train_fooling_rate"] = 0.0 if self.eps == 0 else fit.train_fooling_rate if fit else math.nan
        return fields

    def artifacts(self) -> dict[str, torch.Tensor]:
        """``universal_perturbation``: the perturbations fitted with this attack's settings, in
        increasing budget from left to right, black lines between them, each enlarged to at least
        :data:`TILE` pixels and scaled to its largest magnitude (:func:`signed_image`). Images only."""
        if self.fits is None:
            return {}
        ours = {settings[0]: fit.v[0] for settings, fit in self.fits.fitted.items()
                if settings[1:] == self.settings[1:]}
        if not ours or next(iter(ours.values())).dim() != 3:
            return {}
        tiles = [signed_image(ours[eps]) for eps in sorted(ours)]
        factor = max(1, math.ceil(TILE / max(tiles[0].shape[1:])))
        tiles = [tile.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2) for tile in tiles]
        line = torch.zeros(3, tiles[0].shape[1], 2)
        return {"universal_perturbation": torch.cat([part for tile in tiles for part in (tile, line)][:-1], dim=2)}
