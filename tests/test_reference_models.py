"""Published MNIST reference model (Wong, Rice & Kolter 2020, fgsm.pth) under advrun's attacks,
compared with the published figures. Slow (minutes on a CPU): run with `make test-slow`.

The authors report 88.77% robust accuracy under PGD (50 steps of 0.01, 10 restarts, eps 0.3)
and the AutoAttack authors 82.93% under their standard ensemble, on the full MNIST test set.
"""

import pytest
import torch

from advrun.attacks import PGD
from advrun.data import load_dataset
from advrun.evaluation import robustness_curve
from advrun.models import WongMNIST
from tests.conftest import REFERENCE_MODELS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(shared_data):
    weights = REFERENCE_MODELS / "mnist-fast-adversarial" / "fgsm.pth"
    if not weights.is_file():
        pytest.skip(f"reference weights not available: {weights} is absent")
    model = WongMNIST()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    data = load_dataset({"name": "mnist", "root": str(shared_data), "download": False})
    return model.eval(), data.x_test, data.y_test


def test_clean_accuracy_of_the_reference_model(reference):
    model, x, y = reference
    with torch.no_grad():
        correct = torch.cat([model(x[i : i + 2000]).argmax(1) for i in range(0, len(x), 2000)]) == y
    assert correct.float().mean().item() == pytest.approx(0.9850, abs=0.0005)  # the published 98.50%


def test_pgd_matches_the_published_robust_accuracy(reference):
    model, x, y = reference
    attack = PGD(eps=0.3, norm="inf", steps=50, step_size=0.01, restarts=10)
    row = robustness_curve(model, attack, x, y, [0.3], bounds=(0.0, 1.0), batch_size=1000).curve.iloc[0]
    print(f"PGD-50 x 10 restarts, eps 0.3: robust accuracy {100 * row.robust_accuracy:.2f}% (published 88.77%)")
    assert abs(row.robust_accuracy - 0.8877) <= 0.01


def test_ensemble_is_at_least_as_strong_as_autoattack_reports(reference):
    """The standard version (APGD-CE, APGD-T, FAB-T, Square), as AutoAttack's: at most 83.2%."""
    from advrun.attacks import Ensemble

    model, x, y = reference
    row = robustness_curve(model, Ensemble(eps=0.3), x, y, [0.3], bounds=(0.0, 1.0), batch_size=1000).curve.iloc[0]
    after = ", ".join(f"{column.removeprefix('robust_after_')} {100 * row[column]:.2f}%"
                      for column in row.index if column.startswith("robust_after_"))
    print(f"ensemble, eps 0.3: robust accuracy {100 * row.robust_accuracy:.2f}% (AutoAttack reports 82.93%); "
          f"after each member: {after}")
    assert row.robust_accuracy <= 0.832
