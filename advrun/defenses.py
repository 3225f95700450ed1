"""Defenses are training objectives: ``defense.loss(model, x, y) -> scalar``.

Two optional hooks, both no-ops in :class:`Standard`:

* ``check_model(model, in_shape)`` raises :class:`InvalidValue` when the defense cannot train
  this model (the closed form of :class:`LinearRobust` needs an affine model); call it before
  training so that such a mistake costs no time;
* ``end_of_epoch(model, epoch)`` is called by the training loop after every epoch; returning
  ``"stop"`` ends training early (the catastrophic-overfitting check of :class:`FastAT`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks.base import Attack, Bounds, check_adversarial, eval_mode, input_gradient
from advrun.attacks.norms import dual_norm, norm_field, project, steepest_direction
from advrun.attacks.pgd import PGD
from advrun.errors import InvalidValue, Number, Switch, require_int, require_non_negative, require_positive
from advrun.losses import get_loss
from advrun.structure import affine_parameters, check_affine, has_batch_norm, logit_jacobian, one_hidden_layer
from advrun.training import predict

log = logging.getLogger(__name__)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per sample, ``KL(softmax(p_logits) || softmax(q_logits))``."""
    log_p, log_q = F.log_softmax(p_logits, dim=1), F.log_softmax(q_logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


@dataclass
class Standard:
    """Empirical risk minimisation: the mean training loss (``train.loss``, see
    :mod:`advrun.losses`) on clean inputs. ``criterion`` names that loss; every defense applies
    it to the inputs it trains on."""

    bounds: Bounds = (0.0, 1.0)
    criterion: str = "cross_entropy"
    #: The training losses this defense can use (None: all of :data:`advrun.losses.LOSSES`).
    supported_losses = None

    def criterion_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The configured training loss of ``logits`` for labels ``y``."""
        return get_loss(self.criterion)(logits, y)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion_loss(model(x), y)

    def check_model(self, model: nn.Module, in_shape: Sequence[int]) -> None:
        """Raise :class:`InvalidValue` if this defense cannot train ``model``; any model will do here."""

    def end_of_epoch(self, model: nn.Module, epoch: int) -> str | None:
        """Called by the training loop after each epoch; ``"stop"`` ends training. Nothing here."""
        return None


@dataclass
class Adversarial(Standard):
    """Adversarial training on inputs from ``attack`` (Madry et al. 2018 with PGD), mixed with
    the clean loss as in Goodfellow et al. 2015, eq. 6:
    ``alpha * L(x) + (1 - alpha) * L(x_adv)`` (``alpha = 0``: pure adversarial training).

    The attack runs with the model in eval mode and takes gradients with respect to the
    input only, so crafting the examples leaves no gradient in the parameters. With batch
    norm (``model.batch_norm``) the attack thus sees the running statistics, the network the
    evaluation attacks, and its many forward passes do not move those statistics; dropout is
    off while crafting. The loss on the crafted inputs is computed in the caller's mode (train
    mode in the training loop).

    The inner maximisation is Madry et al.'s: an iterative attack runs all its steps and the
    model trains on its last iterate (the attack's ``keep_best`` is set to ``early_stop``), and an
    attack whose ``loss`` is ``train`` ascends the training loss ``L`` itself. ``early_stop: true``
    is friendly adversarial training instead (Zhang et al. 2020, "Attacks which do not kill
    training make adversarial learning stronger", FAT with ``tau = 0``): each sample's attack
    stops at its first misclassified iterate.
    """

    attack: Attack | None = None
    alpha: float = 0.0
    early_stop: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.attack, Attack):
            raise InvalidValue("attack", f"needs an attack config with a _target_, got {self.attack!r}")
        Number(0, 1).check("alpha", self.alpha)
        Switch().check("early_stop", self.early_stop)
        if hasattr(self.attack, "keep_best"):
            self.attack = dataclasses.replace(self.attack, keep_best=self.early_stop)
        elif self.early_stop:
            raise InvalidValue("early_stop", f"needs an iterative training attack (pgd, bim, mifgsm), not {self.attack.name}")
        self.attack = self.attack.with_training_loss(self.criterion)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.attack(model, x, y, bounds=self.bounds).x_adv
        adversarial = self.criterion_loss(model(x_adv), y)
        if self.alpha == 0:
            return adversarial
        return self.alpha * self.criterion_loss(model(x), y) + (1 - self.alpha) * adversarial


@dataclass
class TRADES(Standard):
    """TRADES (Zhang et al. 2019, "Theoretically principled trade-off between robustness and
    accuracy", eq. 5 and Algorithm 1):

        CE(f(x), y) + beta * KL(f(x) || f(x')),   x' = argmax_{||x' - x|| <= eps} KL(f(x) || f(x'))

    with ``f`` the softmax output. ``x'`` is found by PGD on the KL (Algorithm 1, lines 4-7):
    start at ``x + 0.001 N(0, I)``, then ``steps`` steepest-ascent steps of size ``step_size``,
    each projected onto the ball and the data bounds. The paper uses ``step_size`` 0.007 at
    eps 0.031 with 10 steps (CIFAR-10, 2.26 eps/steps) and 0.01 at eps 0.3 with 40 steps
    (MNIST, 1.33 eps/steps); ``step_size: null`` takes 2.5 eps/steps, PGD's rule in advrun.

    The inner maximisation runs with the model in eval mode and differentiates with respect
    to the input only (no parameter gradient); the outer loss is computed in the caller's
    mode (train mode in the training loop), with gradients through both ``f(x)`` and ``f(x')``
    as in the authors' code. The KL is averaged over the batch (their ``batchmean``).
    """

    beta: float = 6.0
    eps: float = 0.1
    norm: float | str = "inf"
    steps: int = 10
    step_size: float | None = None

    def __post_init__(self) -> None:
        require_non_negative("beta", self.beta)
        require_non_negative("eps", self.eps)
        self.norm = norm_field(self.norm, (math.inf, 2.0), "trades")
        require_int("steps", self.steps, minimum=1)
        if self.step_size is not None:
            require_positive("step_size", self.step_size, hint=" (or null for 2.5 * eps / steps)")

    @property
    def alpha(self) -> float:
        """The step size of the inner maximisation."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def adversarial_inputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The inner maximiser ``x'`` of Algorithm 1 (model in eval mode, input gradients only)."""
        lo, hi = self.bounds
        x = x.detach()
        with eval_mode(model), torch.enable_grad():
            with torch.no_grad():
                clean = model(x)
            x_adv = x + 0.001 * torch.randn_like(x)
            for _ in range(self.steps):
                grad, _ = input_gradient(lambda z: kl_divergence(clean, model(z)), x_adv)
                x_adv = x_adv + self.alpha * steepest_direction(grad, self.norm)
                x_adv = (x + project(x_adv - x, self.eps, self.norm)).clamp(lo, hi)
        check_adversarial(x, x_adv, self.eps, self.norm, self.bounds, attack="trades")
        return x_adv

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.adversarial_inputs(model, x)
        logits = model(x)
        return self.criterion_loss(logits, y) + self.beta * kl_divergence(logits, model(x_adv)).mean()


@dataclass
class FastAT(Adversarial):
    """Fast adversarial training (Wong, Rice & Kolter 2020, "Fast is better than free",
    Algorithm 3): adversarial training on one FGSM step of size ``step_size`` (default
    ``step_scale * eps`` = 1.25 eps) from a uniform random start in the Linf ball, projected
    onto the ball and the data bounds; advrun's :class:`~advrun.attacks.PGD` with one step,
    random start and the last iterate kept. Like every advrun attack the step is taken in
    eval mode (the authors take it in train mode; the two differ only for batch norm or
    dropout: see :class:`Adversarial`). Their cyclic learning rate and mixed
    precision are not part of the objective and are left to the optimizer.

    Catastrophic overfitting (their term: robustness to PGD collapses within an epoch while
    FGSM accuracy rises) is watched as in their early-stopping code: at the end of each epoch
    the accuracy under ``check_steps``-step PGD is measured on a fixed batch, the first
    training batch this defense was handed. When it falls more than ``overfit_drop`` below
    the best so far (their code compares with the previous epoch, threshold 0.2),
    ``on_overfit: warn`` logs a warning and training goes on; ``on_overfit: stop`` restores
    the weights of the best epoch and ends training.
    """

    attack: Attack | None = field(default=None, init=False, repr=False, compare=False)
    alpha: float = field(default=0.0, init=False, repr=False)
    early_stop: bool = field(default=False, init=False, repr=False)
    eps: float = 0.1
    step_scale: float = 1.25
    step_size: float | None = None
    check_steps: int = 10
    overfit_drop: float = 0.2
    on_overfit: str = "stop"
    check_attack: PGD | None = field(default=None, init=False, repr=False, compare=False)
    check_batch: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    history: list[float] = field(default_factory=list, init=False, repr=False, compare=False)  # check accuracy per epoch
    best_epoch: int = field(default=0, init=False, repr=False, compare=False)
    best_state: dict[str, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require_int("check_steps", self.check_steps, minimum=1)
        Number(0, 1, low_open=True).check("overfit_drop", self.overfit_drop)
        if self.on_overfit not in ("warn", "stop"):
            raise InvalidValue("on_overfit", f"must be 'warn' or 'stop', got {self.on_overfit!r}")
        self.attack = PGD(eps=self.eps, norm="inf", steps=1, step_size=self.step_size, step_scale=self.step_scale,
                          random_start=True, loss="train")
        self.check_attack = PGD(eps=self.eps, norm="inf", steps=self.check_steps)
        super().__post_init__()

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.check_batch is None:
            self.check_batch = (x.detach().clone(), y.detach().clone())
        return super().loss(model, x, y)

    def state_dict(self) -> dict:
        """What the overfitting check has seen so far, for training checkpoints."""
        return {"history": list(self.history), "best_epoch": self.best_epoch, "best_state": self.best_state,
                "check_batch": list(self.check_batch) if self.check_batch is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best_epoch, self.best_state = list(state["history"]), state["best_epoch"], state["best_state"]
        self.check_batch = tuple(state["check_batch"]) if state["check_batch"] is not None else None

    def check_accuracy(self, model: nn.Module) -> float:
        """Accuracy under the check PGD on the check batch (correct both clean and attacked)."""
        x, y = self.check_batch
        result = self.check_attack(model, x, y, bounds=self.bounds)
        return float(((predict(model, x) == y) & (result.predictions == y)).float().mean())

    def end_of_epoch(self, model: nn.Module, epoch: int) -> str | None:
        if self.check_batch is None:
            return None
        accuracy = self.check_accuracy(model)
        best = max(self.history, default=-math.inf)
        self.history.append(accuracy)
        if accuracy >= best:
            self.best_epoch, self.best_state = epoch, copy.deepcopy(model.state_dict())
            return None
        if best - accuracy <= self.overfit_drop:
            return None
        message = (f"catastrophic overfitting in epoch {epoch}: PGD accuracy on the check batch fell to "
                   f"{100 * accuracy:.1f}% from its best {100 * best:.1f}%")
        if self.on_overfit == "warn":
            log.warning("%s (fast_at.on_overfit=warn: training goes on)", message)
            return None
        model.load_state_dict(self.best_state)
        log.warning("%s; weights of the best epoch (%d) restored", message, self.best_epoch)
        return "stop"


@dataclass
class LinearRobust(Standard):
    """Exact robust training of affine models, the inner maximisation solved in closed form
    (Kolter & Madry's tutorial, chapter 2; Goodfellow et al. 2015, section 5).

    For logits ``z = W x + b`` and label ``y`` the largest increase of ``z_j - z_y`` over the
    Lp ball of radius ``eps`` is ``eps ||w_j - w_y||_q`` (``q`` the dual norm: L1 for Linf, L2
    for L2, Linf for L1). The loss is the cross-entropy of the worst-case logits
    ``z_j + eps ||w_j - w_y||_q`` (``j != y``; ``z_y`` unchanged). With two classes this is the
    exact worst-case logistic loss ``log(1 + exp(-(z_y - z_j) + eps ||w_j - w_y||_q))``; with
    more, every class pair is at its own worst case, an upper bound on the worst-case
    cross-entropy. The data bounds are ignored: the box only shrinks the set the adversary
    searches, so the loss is an upper bound on the worst case inside the bounds (and exact
    where the worst-case corner stays inside them).

    ``W`` and ``b`` are read off the model (:func:`affine_parameters`) so the loss is
    differentiable in its parameters; the model must be affine in its input (``model=logreg``;
    a normalisation layer is fine), which :meth:`check_model` verifies.
    """

    eps: float = 0.1
    norm: float | str = "inf"
    checked: nn.Module | None = field(default=None, init=False, repr=False, compare=False)
    #: The closed form is the worst case of the logistic / cross-entropy loss only.
    supported_losses = ("cross_entropy", "logistic")

    def __post_init__(self) -> None:
        require_non_negative("eps", self.eps)
        self.norm = norm_field(self.norm, (math.inf, 2.0, 1.0), "linear_robust")

    def check_model(self, model: nn.Module, in_shape: Sequence[int]) -> None:
        try:
            check_affine(model, in_shape)
        except InvalidValue:
            raise InvalidValue(
                "_target_",
                f"linear_robust trains affine models only (e.g. model=logreg), but {type(model).__name__}'s "
                f"logits are not an affine function of the input; use trades or adversarial for non-linear models",
            ) from None
        self.checked = model

    def worst_case_logits(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per sample, ``z_j + eps ||w_j - w_y||_q`` for every class ``j`` (``z_y`` for ``j = y``)."""
        weight, _ = affine_parameters(model, x.shape[1:])
        gaps = weight[None, :, :] - weight[y][:, None, :]  # (samples, classes, features): w_j - w_y
        return model(x) + self.eps * torch.linalg.vector_norm(gaps, ord=dual_norm(self.norm), dim=2)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.checked is not model:
            self.check_model(model, x.shape[1:])
        return self.criterion_loss(self.worst_case_logits(model, x, y), y)


def class_gradients_closed(parts, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and input gradients ``(n, K, d)`` of a one-hidden-layer network
    ``f(x) = W2 sigma(W1 N(x) + b1) + b2`` in closed form (Hein & Andriushchenko 2017, section 3):
    ``grad f_l(x) = N'^T W1^T diag(sigma'(W1 N(x) + b1)) w2_l``, ``N`` the (diagonal) normalisation.
    ``sigma'`` comes from autograd of the elementwise activation, differentiable in the parameters."""
    normalize, first, activation, last = parts
    h = (normalize(x) if normalize is not None else x).flatten(1)
    pre = first(h)
    if not pre.requires_grad:  # parameters frozen: sigma' is still needed
        pre = pre.detach().requires_grad_(True)
    hidden = activation(pre)
    (slope,) = torch.autograd.grad(hidden.sum(), pre, create_graph=True)
    gradients = (slope[:, None, :] * last.weight[None]) @ first.weight  # (n, K, d)
    if normalize is not None:
        gradients = gradients / normalize.std.expand(1, *x.shape[1:]).flatten(1)[:, None, :]
    return last(hidden), gradients


def class_gradients_autograd(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and input gradients ``(n, K, d)`` of any model by double backpropagation (one
    backward pass per class, ``create_graph=True``). Assumes samples do not interact: batch norm
    in train mode couples them, so :meth:`CrossLipschitz.check_model` refuses it (dropout's
    per-sample masks are fine)."""
    return logit_jacobian(model, x, create_graph=True)


@dataclass
class CrossLipschitz(Standard):
    """Cross-Lipschitz regularisation (Hein & Andriushchenko 2017, "Formal guarantees on the
    robustness of a classifier against adversarial manipulation", eq. 5):

        CE(f(x), y) + weight * 1/(n K^2) sum_i sum_{l,m} ||grad f_l(x_i) - grad f_m(x_i)||_2^2

    with gradients with respect to the input (in the data's pixel scale). The pair sum is
    computed as ``2K sum_l ||g_l - g_mean||^2``, which equals ``2K sum_l ||g_l||^2 - 2 ||sum_l
    g_l||^2`` without the K^2 pairs and without its cancellation (exactly 0 when all class
    gradients agree). ``form``: ``closed`` (one-hidden-layer networks, :func:`class_gradients_closed`),
    ``autograd`` (any model, double backpropagation) or ``auto`` (closed where it applies). The
    paper selects ``weight`` (its lambda) on validation data; 0.01 is advrun's default.
    """

    weight: float = 0.01
    form: str = "auto"

    def __post_init__(self) -> None:
        require_non_negative("weight", self.weight)
        if self.form not in ("auto", "closed", "autograd"):
            raise InvalidValue("form", f"must be 'auto', 'closed' or 'autograd', got {self.form!r}")

    def check_model(self, model: nn.Module, in_shape: Sequence[int]) -> None:
        if has_batch_norm(model):
            raise InvalidValue("_target_", "cross_lipschitz penalises per-sample input gradients, which batch norm "
                                           "in train mode couples across the batch; use model.batch_norm=false")
        if self.form == "closed" and one_hidden_layer(model) is None:
            raise InvalidValue("form", f"the closed form needs a one-hidden-layer MLP (model=mlp model.hidden=[h]), "
                                       f"not this {type(model).__name__}; use form=auto or autograd")

    def class_gradients(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and per-class input gradients ``(n, K, d)`` in the configured form."""
        parts = one_hidden_layer(model) if self.form != "autograd" else None
        if parts is not None:
            return class_gradients_closed(parts, x)
        self.check_model(model, x.shape[1:])
        return class_gradients_autograd(model, x)

    @staticmethod
    def penalty(gradients: torch.Tensor) -> torch.Tensor:
        """``1/(n K^2) sum_i sum_{l,m} ||g_l - g_m||^2`` for gradients ``(n, K, d)``."""
        k = gradients.shape[1]
        centred = gradients - gradients.mean(dim=1, keepdim=True)
        return 2 * centred.pow(2).sum(dim=(1, 2)).mean() / k

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, gradients = self.class_gradients(model, x)
        return self.criterion_loss(logits, y) + self.weight * self.penalty(gradients)


@dataclass
class Gaussian(Standard):
    """Gaussian noise augmentation, the training of the base classifiers of randomized smoothing
    (Cohen, Rosenfeld & Kolter 2019, "Certified adversarial robustness via randomized smoothing"):
    the training loss on ``x + e``, ``e ~ N(0, sigma^2 I)`` drawn afresh for every batch from
    torch's global generator (seeded by the run), in the data's pixel scale.

    As in the paper's code the noisy inputs are not clipped to the data's bounds: the smoothed
    classifier (:mod:`advrun.smoothing`) sees unclipped noise, and the base model learns to
    classify what it will see. Train at the ``sigma`` the model will be smoothed with; ``sigma =
    0`` is standard training. The noise makes the model robust to random perturbations, not to
    adversarial ones: the guarantee is that of the smoothed classifier, certified in L2.
    """

    sigma: float = 0.25

    def __post_init__(self) -> None:
        require_non_negative("sigma", self.sigma)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion_loss(model(x + self.sigma * torch.randn_like(x)), y)
