"""Spatial (rotation + translation grid search) and adversarial patch, checked against exact
image operations (torch.rot90, integer shifts), planted solutions and pixel counts."""

import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from advrun.attacks import Patch, Spatial, ThreatModelAttack
from advrun.attacks.base import Goal
from advrun.attacks.patch import paste
from advrun.attacks.spatial import rotate_translate
from advrun.errors import InvalidValue
from advrun.evaluation import robustness_curve

#: Images resampled by rotate_translate or paste (float32 affine grid and bilinear interpolation)
#: against the same pixels moved exactly: the sampling coordinates carry float32 rounding (cos 90
#: degrees is -4.4e-8 in float32; the grid's normalisation round trip is ~1e-7 relative on
#: coordinates of up to ~10 pixels), i.e. ~1e-6 pixel, which moves a value in [0, 1] by ~1e-6.
RESAMPLED_ATOL = 1e-5

# Comparisons without stated tolerances use the defaults, a few ulps: torch.testing.assert_close
# (float32 rtol 1.3e-6, atol 1e-5) and pytest.approx (rel 1e-6; e.g. 3 / 28 written to 17 digits).


def shifted(image, dx, dy, fill):
    """``image`` (C x H x W) moved dx pixels right and dy down, uncovered pixels set to ``fill``."""
    out = torch.full_like(image, fill)
    _, h, w = image.shape
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


# ---------------------------------------------------------------- spatial


def test_zero_rotation_and_translation_is_the_identity():
    x = torch.rand(6, 3, 9, 7)
    assert torch.equal(rotate_translate(x, torch.zeros(6), torch.zeros(6, 2)), x)
    tiny = rotate_translate(x, torch.full((6,), 1e-9), torch.zeros(6, 2))  # through the interpolation
    torch.testing.assert_close(tiny, x, atol=RESAMPLED_ATOL, rtol=0)


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("angle, k", [(90.0, 1), (-90.0, -1), (180.0, 2), (270.0, 3)])
def test_quarter_turns_are_rot90(size, angle, k):
    """Counter-clockwise as displayed (row 0 on top), like torch.rot90 over (H, W)."""
    x = torch.rand(4, 2, size, size)
    out = rotate_translate(x, torch.full((4,), angle), torch.zeros(4, 2))
    torch.testing.assert_close(out, torch.rot90(x, k, dims=(-2, -1)), atol=RESAMPLED_ATOL, rtol=0)


def test_integer_translations_shift_and_fill_with_the_lower_bound():
    x = torch.rand(3, 1, 6, 9) * 0.5 + 0.25
    shifts = torch.tensor([[2.0, 0.0], [0.0, -1.0], [-3.0, 2.0]])
    out = rotate_translate(x, torch.zeros(3), shifts, fill=0.25)
    for i, (dx, dy) in enumerate(shifts.int().tolist()):
        torch.testing.assert_close(out[i], shifted(x[i], dx, dy, 0.25), atol=RESAMPLED_ATOL, rtol=0)


def test_rotated_corners_take_the_lower_bound_and_outputs_stay_in_bounds():
    lo, hi = 0.2, 0.9
    x = lo + (hi - lo) * torch.rand(5, 1, 16, 16)
    out = rotate_translate(x, torch.full((5,), 45.0), torch.zeros(5, 2), fill=lo)
    assert torch.equal(out[:, :, 0, 0], torch.full((5, 1), lo))  # 2.6 pixels outside the rotated image
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 4)).eval()
    y = torch.randint(0, 4, (5,))
    x_adv, _ = Spatial(max_rotation=45.0, rotations=5, translations=3).perturb(model, x, Goal(y), (lo, hi))
    assert x_adv.min() >= lo and x_adv.max() <= hi


class Planted(nn.Module):
    """Class 1 exactly near one of the ``secrets`` images, else class 0."""

    def __init__(self, secrets):
        super().__init__()
        self.secrets = secrets.flatten(1)

    def forward(self, z):
        distance = torch.cdist(z.flatten(1), self.secrets).amin(dim=1) ** 2
        return torch.stack([torch.zeros_like(distance), 1e-3 - distance], dim=1)


def test_every_grid_point_is_tried():
    """125 images, each of which the model gets wrong only under its own grid point (quarter
    turns x integer shifts, computed independently with rot90 and slicing)."""
    attack = Spatial(max_rotation=180.0, rotations=5, max_translation=2 / 8, translations=5)
    grid = [(k, dx, dy) for k in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2) for dy in (-2, -1, 0, 1, 2)]
    x = torch.rand(len(grid), 1, 8, 8) * 0.9 + 0.1
    secrets = torch.stack([shifted(torch.rot90(x[i], k, dims=(-2, -1)), dx, dy, 0.0) for i, (k, dx, dy) in enumerate(grid)])
    y = torch.zeros(len(grid), dtype=torch.long)
    result = attack(Planted(secrets), x, y)
    assert result.success.all()
    # resampling error as RESAMPLED_ATOL (~1e-6); 1e-4 is looser still
    torch.testing.assert_close(result.x_adv, secrets, atol=1e-4, rtol=0)


def test_grid_covers_the_ranges_smallest_first():
    angles, shifts = Spatial().grid(28, 28)
    assert len(angles) == 31 * 5 * 5
    assert angles[0] == 0 and (shifts[0] == 0).all()
    assert angles.min() == -30 and angles.max() == 30
    assert set(shifts[:, 0].tolist()) == {-3.0, -1.5, 0.0, 1.5, 3.0}
    angles, shifts = Spatial().grid(8, 8)  # 3 pixels of 28, scaled to the image side
    assert shifts.abs().max().item() == pytest.approx(3 / 28 * 8)


def test_fooled_samples_leave_the_search(monkeypatch):
    """A chunk budget of 6 images per model call: after the identity (the first grid point) only
    the three samples it did not fool are transformed, two grid points per call."""
    monkeypatch.setattr("advrun.attacks.spatial._CHUNK_VALUES", 6 * 64)
    rows = []

    class Spy(nn.Module):
        def forward(self, z):
            rows.append(len(z))
            return torch.stack([z.flatten(1).mean(1), torch.full((len(z),), 0.3)], dim=1)

    x = torch.cat([torch.zeros(3, 1, 8, 8), torch.ones(3, 1, 8, 8)])  # the first three are fooled at once
    y = torch.zeros(6, dtype=torch.long)
    result = Spatial(rotations=3, translations=3)(Spy(), x, y)
    assert result.success[:3].all() and not result.success[3:].any()
    assert torch.equal(result.x_adv[:3], x[:3])  # fooled at the identity, the first grid point
    assert rows == [6] * 14  # 1 + 26 / 2 calls; no extra forward pass for the result


def test_spatial_finds_transformations_that_fool_the_digits_mlp(trained):
    model, x, y = trained("mlp")
    x, y = x[:100], y[:100]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    small = Spatial(max_rotation=10.0, rotations=5, translations=1)(model, x, y)
    large = Spatial(rotations=7, translations=3)(model, x, y)
    assert (large.success | ~small.success).all()  # a superset of grid points fools a superset
    assert (large.success & correct).sum() > (small.success & correct).sum()


def test_spatial_needs_images():
    Spatial().check_model(nn.Identity(), (1, 8, 8))
    with pytest.raises(InvalidValue):
        Spatial().check_model(nn.Identity(), (2,))


@pytest.mark.parametrize("kwargs, field", [
    ({"max_rotation": -1.0}, "max_rotation"), ({"max_rotation": 200.0}, "max_rotation"),
    ({"rotations": 0}, "rotations"), ({"translations": 1.5}, "translations"),
    ({"max_translation": 2.0}, "max_translation"), ({"max_rotation": "30"}, "max_rotation"),
])
def test_spatial_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidValue) as info:
        Spatial(**kwargs)
    assert info.value.field == field


# ---------------------------------------------------------------- patch


def test_an_aligned_patch_is_copied_pixel_for_pixel():
    x = torch.rand(2, 3, 10, 10)
    patch = torch.rand(3, 4, 4)
    out = paste(x, patch, torch.tensor([[5.0, 3.0], [5.0, 3.0]]), torch.tensor([4.0, 4.0]), torch.tensor([0.0, 90.0]))
    # pixel centres land on pixel centres up to float32 rounding of normalised coordinates (~6e-8,
    # times a side of 4-10 pixels): values in [0, 1] move by < 1e-6
    torch.testing.assert_close(out[0, :, 1:5, 3:7], patch, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1, :, 1:5, 3:7], torch.rot90(patch, 1, dims=(-2, -1)), atol=1e-6, rtol=0)
    outside = torch.ones(10, 10, dtype=torch.bool)
    outside[1:5, 3:7] = False
    assert torch.equal(out[:, :, outside], x[:, :, outside])


@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_the_pasted_patch_covers_its_area_and_nothing_else(angle):
    """A constant patch of area 0.25 on 32 x 32 images: 256 pixels change (exactly when axis-aligned;
    up to the pixels the rotated edges cut when rotated), to the patch value; the rest is x."""
    n = 50
    x = torch.rand(n, 1, 32, 32) * 0.5
    attack = Patch(scale=0.25, scale_jitter=0.0, max_rotation=angle)
    centers, sides, angles = attack.placements(n, 32, 32)
    torch.testing.assert_close(sides, torch.full((n,), 16.0))
    out = paste(x, torch.ones(1, 5, 5), centers, sides, angles)
    changed = out != x
    torch.testing.assert_close(out[changed], torch.ones(int(changed.sum())))
    counts = changed.flatten(1).sum(1).float()
    if angle == 0:
        assert (counts == 256).all()
    else:
        # not float error: the pixels that the rotated edges cut go either way (rasterisation)
        assert (counts - 256).abs().max() <= 0.1 * 256 and (counts.mean() - 256).abs() < 0.02 * 256


def test_placements_keep_the_patch_inside_the_image():
    attack = Patch(scale=0.2, scale_jitter=0.2, max_rotation=30.0)
    centers, sides, angles = attack.placements(2000, 12, 20)
    area = sides**2 / (12 * 20)
    # float32 side^2 / 240 rounds by a few ulps of 0.24 (ulp 1.5e-8)
    assert area.min() >= 0.16 - 1e-6 and area.max() <= 0.24 + 1e-6
    assert angles.abs().max() <= 30.0
    r = angles * math.pi / 180
    half = sides / 2 * (r.cos().abs() + r.sin().abs())
    # float32 coordinates of up to 20 (ulp 1.9e-6) through cos and sin of a float32 angle: a few ulps
    assert (centers[:, 0] - half >= -1e-5).all() and (centers[:, 0] + half <= 20 + 1e-5).all()
    assert (centers[:, 1] - half >= -1e-5).all() and (centers[:, 1] + half <= 12 + 1e-5).all()


def test_a_trained_patch_beats_a_random_patch_on_held_out_digits(trained, digits):
    model, x, y = trained("mlp")
    rates = {}
    for steps in (0, 50):
        attack = Patch(target=0, scale=0.4, train_steps=steps)
        attack.prepare(model, digits.x_train, digits.y_train, digits.bounds)
        result = attack(model, x, y)
        eligible = (y != 0) & (model(x).argmax(1) == y)
        rates[steps] = result.success[eligible].float().mean().item()
        assert (result.targets == 0).all()
    assert rates[50] > rates[0] + 0.3


def test_patch_training_leaves_the_model_alone(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Dropout(0.5), nn.Linear(10, 10)).train()
    before = [p.detach().clone() for p in model.parameters()]
    Patch(train_steps=3, batch_size=8).prepare(model, digits.x_train, digits.y_train, digits.bounds)
    assert model.training and model[2].training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_patch_artifact_is_an_image_in_unit_range(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    attack = Patch(scale=0.1, scale_jitter=0.2, train_steps=2)
    assert attack.artifacts() == {}
    with pytest.raises(RuntimeError, match="prepare"):
        attack(model, digits.x_test[:4], digits.y_test[:4])
    lo, hi = -1.0, 3.0
    attack.prepare(model, lo + (hi - lo) * digits.x_train, digits.y_train, (lo, hi))
    image = attack.artifacts()["patch"]
    side = math.ceil(math.sqrt(0.12 * 64))
    assert image.shape == (1, side, side)
    assert image.min() >= 0 and image.max() <= 1


def test_patch_runs_once_in_the_evaluation(trained, digits):
    """Not an Lp threat model: one row with eps NaN; the success rate leaves out the target class."""
    model, x, y = trained("mlp")
    attack = Patch(target=3, train_steps=5)
    attack.prepare(model, digits.x_train, digits.y_train, digits.bounds)
    curve = robustness_curve(model, attack, x, y, [0.0, 0.1], bounds=digits.bounds, batch_size=200).curve
    assert len(curve) == 1 and math.isnan(curve["eps"].iloc[0])
    correct = (model(x).argmax(1) == y)
    assert curve["n_eligible"].iloc[0] == int((correct & (y != 3)).sum())


@pytest.mark.parametrize("kwargs, field", [
    ({"target": None}, "target"), ({"target": "random"}, "target"), ({"target": "least_likely"}, "target"),
    ({"scale": 0.0}, "scale"), ({"scale": 1.5}, "scale"), ({"scale": "big"}, "scale"), ({"scale_jitter": 1.0}, "scale_jitter"),
    ({"max_rotation": 181.0}, "max_rotation"), ({"train_steps": -1}, "train_steps"),
    ({"batch_size": 0}, "batch_size"), ({"learning_rate": 0.0}, "learning_rate"),
])
def test_patch_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidValue) as info:
        Patch(**kwargs)
    assert info.value.field == field


def test_patch_needs_images_and_an_existing_target_class():
    Patch().check_model(nn.Identity(), (1, 8, 8))
    with pytest.raises(InvalidValue):
        Patch().check_model(nn.Identity(), (2,))
    with pytest.raises(InvalidValue, match="does not exist"):
        Patch(target=10).check_classes(10)


@pytest.mark.parametrize("option, cls", [("spatial", Spatial), ("patch", Patch)])
def test_configs_build_the_paper_defaults(make_cfg, option, cls):
    attack = instantiate(make_cfg(f"attack={option}").attack, eps=1.0)
    assert type(attack) is cls and isinstance(attack, ThreatModelAttack)
    if option == "spatial":
        assert (attack.max_rotation, attack.rotations, attack.translations) == (30.0, 31, 5)
        assert attack.max_translation == pytest.approx(3 / 28)
    else:
        assert (attack.target, attack.scale) == (0, 0.1)
