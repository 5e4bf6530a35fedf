import pytest
import torch

from biotune.config import TrainConfig
from biotune.errors import BioTuneError
from biotune.models.blocks import partition_model
from biotune.models.build import build_model
from biotune.training.groups import param_groups
from biotune.training.trainer import FineTuner, TrainerOptions


@pytest.fixture
def tuner():
    pm = build_model("test_efficientnet", 3, weights="random")
    blocks = partition_model(pm.model, "stage")
    return FineTuner(pm.model, blocks, TrainConfig(epochs=2, patience=1, batch_size=8), torch.device("cpu"))


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % 3


def test_frozen_blocks_unchanged_in_eval_mode_and_trainable_move(tuner):
    x, y = _data()
    lrs = [0.0] * (len(tuner.blocks) - 2) + [1e-2, 1e-2]
    before = {k: v.clone() for k, v in tuner.model.state_dict().items()}
    seen_modes = {}

    def record(epoch, acc, loss):
        tuner._configure([lr > 0 for lr in lrs])
        for b, mods in zip(tuner.blocks, tuner._block_modules):
            seen_modes[b.name] = [m.training for m in mods]

    tuner.run(lrs, (x, y), (x, y), seed=0, on_epoch=record)
    after = tuner.model.state_dict()
    frozen = tuner.blocks[:-2]
    for b in frozen:
        assert not any(seen_modes[b.name])  # eval mode: BatchNorm statistics do not move
        for k in before:
            if b.owns(k):
                assert torch.equal(before[k], after[k]), k
    moved = [k for k in before if tuner.blocks[-2].owns(k) and not torch.equal(before[k], after[k])]
    assert moved


def test_same_seed_same_result_other_seed_differs(tuner):
    x, y = _data()
    lrs = [1e-3] * len(tuner.blocks)
    a = tuner.run(lrs, (x, y), (x, y), seed=4)
    b = tuner.run(lrs, (x, y), (x, y), seed=4)
    c = tuner.run(lrs, (x, y), (x, y), seed=5)
    assert a.val_accuracies == b.val_accuracies and a.train_losses == b.train_losses
    assert a.train_losses != c.train_losses


def test_early_stopping_and_best_state(tuner):
    x, y = _data()
    r = tuner.run([1e-3] * len(tuner.blocks), (x, y), (x, y), seed=0, keep_best=True)
    assert 1 <= r.epochs_run <= 2 and r.best_epoch >= 1 and r.best_state is not None
    assert r.best_val_accuracy == max(r.val_accuracies)


def test_all_frozen_refused(tuner):
    x, y = _data()
    with pytest.raises(BioTuneError, match="every block is frozen"):
        tuner.run([0.0] * len(tuner.blocks), (x, y), (x, y), seed=0)


def test_diverging_run_is_flagged(tuner):
    x, y = _data()
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    r = tuner.run([1e-3] * len(tuner.blocks), (x, y), (x, y), seed=0)
    assert r.diverged


def test_param_groups_by_name_skip_frozen():
    pm = build_model("resnet18", 3, weights="random")
    blocks = partition_model(pm.model, "stage")
    groups = param_groups(pm.model, blocks, [0, 0, 0, 0, 1e-4, 1e-3])
    assert [g["name"] for g in groups] == ["layer4", "fc"]
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    assert {id(p) for p in groups[1]["params"]} == {id(pm.model.fc.weight), id(pm.model.fc.bias)}
    torch.optim.Adam(groups)


@pytest.mark.slow
def test_compiled_model_trains_like_eager_with_the_prefix_bypassed():
    """``--compile``: torch.compile gives the same runs (here on CPU) with the frozen prefix bypassed,
    the harder case (a run without a prefix compiles the same model whole; one case halves the
    compile time of this, the suite's slowest test)."""
    pytest.importorskip("torch._inductor")
    import shutil

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (48,), generator=g)
    runs = {}
    for compiled in (False, True):
        pm = build_model("test_resnet", 4, weights="random", seed=0)
        blocks = partition_model(pm.model)
        tuner = FineTuner(pm.model, blocks, TrainConfig(epochs=2, patience=2, batch_size=16), torch.device("cpu"),
                          TrainerOptions(compile=compiled, cache_memory=2**30))
        n = len(blocks)
        runs[compiled] = [tuner.run([0.0] * k + [1e-3] * (n - k), (x, y), (x, y), seed=1) for k in (n - 2,)]
    for eager, comp in zip(runs[False], runs[True]):
        assert comp.prefix_depth == eager.prefix_depth == n - 2
        assert comp.val_accuracies == eager.val_accuracies
        assert comp.train_losses == pytest.approx(eager.train_losses, rel=1e-4)


def test_evaluation_results_do_not_depend_on_the_evaluation_batch(tuner):
    """The evaluation batch follows the training batch (not a fixed 512): scores are the same for any
    batch (eval mode scores each image on its own), and so are a run's validation curve and test score."""
    from biotune.training.metrics import evaluate_accuracy
    from biotune.training.trainer import eval_batch_size

    assert tuner.eval_batch_size == eval_batch_size(tuner.config.batch_size) == 2 * tuner.config.batch_size
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, 16, 16, generator=g), torch.arange(50) % 3
    for metric in ("top1", "balanced"):
        scores = {b: evaluate_accuracy(tuner.model, x, y, b, metric=metric) for b in (3, 16, 50, 512)}
        assert len(set(scores.values())) == 1, scores
    lrs = (1e-3,) * len(tuner.blocks)
    small = tuner.run(lrs, (x, y), (x[:30], y[:30]), seed=2, keep_best=True)
    test_small = tuner.evaluate(x[30:], y[30:], state=small.best_state)
    tuner.eval_batch_size = 512
    large = tuner.run(lrs, (x, y), (x[:30], y[:30]), seed=2, keep_best=True)
    assert large.val_accuracies == small.val_accuracies and large.train_losses == small.train_losses
    assert tuner.evaluate(x[30:], y[30:], state=large.best_state) == test_small


def test_gradient_checkpointing_trains_the_same_first_epoch():
    """With timm's gradient checkpointing the forward pass is the same: the first epoch's training loss
    agrees to float tolerance (BatchNorm's running statistics then differ: blocks are recomputed)."""
    x, y = _data(32)
    losses = []
    for checkpointing in (False, True):
        pm = build_model("test_efficientnet", 3, weights="random", seed=0)
        tuner = FineTuner(pm.model, partition_model(pm.model, "stage"), TrainConfig(epochs=1, batch_size=8),
                          torch.device("cpu"), TrainerOptions(grad_checkpointing=checkpointing))
        assert getattr(tuner.model, "grad_checkpointing", False) is checkpointing
        losses.append(tuner.run((1e-3,) * len(tuner.blocks), (x, y), (x, y), seed=1).train_losses[0])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
