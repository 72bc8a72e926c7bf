"""Foreign checkpoints: the IG-KD authors' released network and torchvision-style MobileNetV2 state dicts, mapped
onto ``paper-truncated`` in order and checked by shape; every refusal is one line naming the tensor."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from automl_kd.distill.checkpoints import detect_layout, load_weights, map_state_dict, read_state_dict
from automl_kd.errors import ConfigError
from automl_kd.plugins.spaces.paper_truncated import PaperTruncatedSpace

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RELEASED = SHARED / "igkd-students" / "CIFAR10_KD_IG_AT_T2.5_alpha0.01_p0.1_gamma0.8_TestAcc92.42.pt"
needs_release = pytest.mark.skipif(not RELEASED.is_file(), reason=f"{RELEASED} is not here")


def torchvision_style(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s tensors under torchvision MobileNetV2 names (``features.N.conv.M...``, ``classifier.1``),
    written the way torchvision's module tree names them, in the same order."""
    out: dict[str, torch.Tensor] = {}
    for i, (k, v) in enumerate(model.state_dict().items()):
        block = k.split(".")[1] if k.startswith("features.") else None
        out[f"features.{block}.tv{i}" if block is not None else f"classifier.1.{k.split('.')[-1]}"] = v
    return out


@needs_release
def test_the_released_network_loads_in_order_and_predicts() -> None:
    model = PaperTruncatedSpace().build({"removed": 5})
    tensors = read_state_dict(RELEASED)  # saved on a GPU: loads on the CPU
    assert len(tensors) == len(model.state_dict()) == 236
    assert detect_layout(list(tensors), set(model.state_dict())) == "igkd"
    assert load_weights(model, RELEASED) == "igkd"
    # the classifier's weights arrived where they belong (the last tensors of both layouts)
    assert torch.equal(model.state_dict()["classifier.weight"], tensors["classifier.1.weight"])
    assert torch.equal(model.state_dict()["features.0.conv.weight"], tensors["front_layers.0.0.weight"])


@needs_release
def test_the_released_network_does_not_fit_another_depth() -> None:
    model = PaperTruncatedSpace().build({"removed": 6})
    with pytest.raises(ConfigError) as err:
        load_weights(model, RELEASED)
    msg = str(err.value)
    assert "\n" not in msg
    assert "(igkd layout): tensor 216 'end_layers.3.conv.0.0.weight' [576, 96, 1, 1] does not fit" in msg
    assert msg.endswith("'classifier.weight' [10, 96]")


def test_a_torchvision_style_state_dict_maps_in_order(tmp_path: Path) -> None:
    source = PaperTruncatedSpace().build({"removed": 3})
    sd = torchvision_style(source)
    assert detect_layout(list(sd), set(source.state_dict())) == "torchvision"
    path = tmp_path / "mbv2.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)  # nested, saved from DDP
    target = PaperTruncatedSpace().build({"removed": 3})
    assert load_weights(target, path) == "torchvision"
    for (k, a), b in zip(target.state_dict().items(), source.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_the_first_tensor_that_does_not_fit_is_named() -> None:
    model = PaperTruncatedSpace().build({"removed": 10})
    other = PaperTruncatedSpace(width=0.5).build({"removed": 10})
    with pytest.raises(ConfigError) as err:
        map_state_dict(model, torchvision_style(other), "checkpoint x.pt")
    msg = str(err.value)
    assert msg.startswith("checkpoint x.pt (torchvision layout): tensor 0 'features.0.tv0' [16, 3, 3, 3]")
    assert "'features.0.conv.weight' [32, 3, 3, 3]" in msg and "\n" not in msg


def test_native_keys_with_a_wrong_shape_and_leftover_tensors() -> None:
    model = PaperTruncatedSpace().build({"removed": 16})
    sd = dict(model.state_dict())
    sd["classifier.weight"] = torch.zeros(3, 3)
    with pytest.raises(ConfigError, match=r"tensor 'classifier.weight' has shape \[3, 3\]"):
        map_state_dict(model, sd)
    longer = {f"blob{i}": v for i, v in enumerate([*model.state_dict().values(), torch.zeros(1)])}
    with pytest.raises(ConfigError, match="are left over"):
        map_state_dict(model, longer)


def test_unreadable_checkpoints_are_one_line(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("this ran",))

    unsafe = tmp_path / "unsafe.pt"
    unsafe.write_bytes(pickle.dumps({"w": Evil()}))
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:50])
    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    notensor = tmp_path / "notensor.pt"
    torch.save({"w": 3}, notensor)
    cases = {
        unsafe: "cannot be read safely",
        truncated: "cannot be read safely",
        empty: "holds no state dict",
        notensor: "entry 'w' is not a tensor",
        tmp_path / "missing.pt": "does not exist",
        tmp_path: "is a directory",
    }
    for path, expected in cases.items():
        with pytest.raises(ConfigError) as err:
            read_state_dict(path)
        assert expected in str(err.value), (path, str(err.value))
        assert "\n" not in str(err.value)
