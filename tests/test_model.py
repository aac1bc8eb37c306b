import pytest
import torch

from model import count_parameters, create_model


def test_bart_has_the_notebooks_parameter_count():
    assert count_parameters(create_model("bart", num_classes=42, image_size=128)) == 9_705_418


def test_cnn4conv_flatten_is_64x14x14_at_64px():
    m = create_model("cnn4conv", num_classes=42, image_size=64)
    assert m.classifier[1].in_features == 64 * 14 * 14
    assert m.classifier[4].out_features == 42


@pytest.mark.parametrize("name", ["cnn4conv", "bart", "resnet"])
@pytest.mark.parametrize("size", [32, 64, 128])
def test_output_shapes(name, size):
    m = create_model(name, num_classes=42, image_size=size).eval()
    with torch.no_grad():
        assert m(torch.zeros(2, 3, size, size)).shape == (2, 42)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("bart", image_size=100)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet50")


def test_cli_offers_every_registered_model():
    import cli
    from model import MODELS

    assert sorted(cli.MODELS.choices) == sorted(MODELS)


def test_resnet_is_residual_batchnormed_and_globally_pooled():
    from torch import nn

    m = create_model("resnet", num_classes=27, image_size=64)
    assert count_parameters(m) == 1_945_915
    assert count_parameters(create_model("resnet", num_classes=27, image_size=128)) == 1_945_915  # size-free head
    assert isinstance(m.classifier[0], nn.AdaptiveAvgPool2d) and m.classifier[-1].in_features == 256
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == 10
    blocks = [x for x in m.modules() if type(x).__name__ == "_Residual"]
    x = torch.randn(2, 64, 8, 8)
    assert len(blocks) == 3 and torch.equal(blocks[0](x.abs()), x.abs())  # zero-init: starts as the identity
