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


def test_resnet_widths_set_the_channels_and_the_default_recipes_network_is_the_narrow_one():
    from pipeline.common.config import RESNET_WIDTHS

    m = create_model("resnet", num_classes=27, image_size=64, widths=RESNET_WIDTHS).eval()
    assert RESNET_WIDTHS == (32, 48, 96, 192)
    assert count_parameters(m) == 1_100_251  # against 1,945,915 at the network's own 32-64-128-256
    assert m.classifier[-1].in_features == 192 and m.features[0].out_channels == 32
    with torch.no_grad():
        assert m(torch.zeros(2, 3, 64, 64)).shape == (2, 27)
        assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 27)  # progressive resizing's low side
    assert count_parameters(create_model("resnet", num_classes=27, image_size=64, widths=[32, 64, 128, 256])) \
        == 1_945_915


@pytest.mark.parametrize("name, widths, words", [("bart", (8, 8, 8, 8), "resnet's"),
                                                 ("resnet", (8, 8, 8), "4 positive"),
                                                 ("resnet", (8, 0, 8, 8), "4 positive"),
                                                 ("resnet", 8, "4 positive")])
def test_bad_widths_are_refused(name, widths, words):
    with pytest.raises(ValueError, match=words):
        create_model(name, num_classes=4, image_size=64, widths=widths)
