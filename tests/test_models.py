"""Models: shapes, normalisation inside the model, clear errors for impossible set-ups."""

import pytest
import torch

from advrun.errors import InvalidValue
from advrun.models import CNN, MLP, LogReg, Normalize


@pytest.mark.parametrize("cls", [LogReg, MLP, CNN])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 28, 28)])
def test_models_map_inputs_to_logits(cls, shape):
    model = cls(in_shape=shape, num_classes=7)
    assert model(torch.rand(5, *shape)).shape == (5, 7)


def test_vector_inputs_work_for_dense_models_only():
    assert MLP(in_shape=(2,), num_classes=2)(torch.rand(3, 2)).shape == (3, 2)
    with pytest.raises(InvalidValue, match="image inputs"):
        CNN(in_shape=(2,), num_classes=2)


def test_normalization_is_a_layer_fitted_to_the_training_set():
    x = torch.rand(500, 3, 4, 4) * torch.tensor([1.0, 0.5, 0.2]).reshape(1, 3, 1, 1)
    model = MLP(in_shape=(3, 4, 4), num_classes=2, normalize=True)
    model.fit_normalization(x)
    norm = model[0]
    assert isinstance(norm, Normalize)
    z = norm(x)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    assert "0.mean" in model.state_dict() and "0.std" in model.state_dict()


def test_logreg_is_affine_in_the_pixels():
    model = LogReg(in_shape=(1, 8, 8), num_classes=3)
    x = torch.rand(4, 1, 8, 8)
    linear = model[-1]
    torch.testing.assert_close(model(x), x.flatten(1) @ linear.weight.T + linear.bias)


@pytest.mark.parametrize("kwargs, field", [
    ({"activation": "swish"}, "activation"), ({"hidden": [0]}, "hidden"), ({"normalize": "yes"}, "normalize"),
])
def test_invalid_options_name_the_field(kwargs, field):
    with pytest.raises(InvalidValue) as info:
        MLP(in_shape=(1, 8, 8), num_classes=10, **kwargs)
    assert info.value.field == field


def test_too_many_pooling_blocks_for_small_images():
    with pytest.raises(InvalidValue, match="too many"):
        CNN(in_shape=(1, 8, 8), num_classes=10, channels=[4, 4, 4, 4])
