"""DeiT distillation: the student's distillation token and two heads, the hard-label loss, the teacher, and a run."""

import pytest
import torch
import torch.nn.functional as F
from einops import EinopsError

from vitlib import checkpoints, data, distill, files, sample, train
from vitlib.device import Precision
from vitlib.models import DistilledViT, build_model, count_parameters
from vitlib.presets import PresetError, get_preset, with_settings

SAMPLE = get_preset("sample")
STUDENT = SAMPLE.model.replace(distill=True)


@pytest.fixture(autouse=True)
def _one_thread_and_cache_in_tmp(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path / "data"))
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("attention", ["linformer", "full"])
def test_the_student_has_two_heads_in_training_and_predicts_their_mean(attention):
    torch.manual_seed(0)
    model = build_model(STUDENT.replace(attention=attention, kv_init="uniform"))
    assert isinstance(model, DistilledViT) and model.config.seq_len == STUDENT.num_patches + 2
    x = torch.randn(3, 3, STUDENT.image_size, STUDENT.image_size)
    cls_logits, dist_logits = model.train()(x)
    assert cls_logits.shape == dist_logits.shape == (3, 2)
    assert not torch.allclose(cls_logits, dist_logits)  # two heads of their own
    torch.testing.assert_close(model.eval()(x), (cls_logits + dist_logits) / 2)


def test_the_token_adds_a_token_a_position_and_a_head_and_nothing_else():
    plain = build_model(SAMPLE.model.replace(attention="full", kv_init="uniform"))
    student = build_model(STUDENT.replace(attention="full", kv_init="uniform"))
    head = count_parameters(plain.mlp_head)
    assert count_parameters(student) == count_parameters(plain) + 2 * STUDENT.dim + head


def test_the_class_head_sees_the_distillation_token():
    """The token attends and is attended to: the class head's output depends on it."""
    torch.manual_seed(0)
    model = build_model(STUDENT).train()
    cls_logits, _ = model(torch.randn(2, 3, STUDENT.image_size, STUDENT.image_size))
    cls_logits.sum().backward()
    assert model.dist_token.grad.abs().sum() > 0


def test_vit_pytorchs_distillable_efficient_vit_fails_on_the_efficient_vits_class_token():
    """Why DistilledViT writes the token itself (its docstring): vit-pytorch's version assumes a (1, dim) CLS token."""
    from linformer import Linformer
    from vit_pytorch.distill import DistillableEfficientViT

    cfg = STUDENT
    vit = DistillableEfficientViT(image_size=cfg.image_size, patch_size=cfg.patch_size, num_classes=2, dim=cfg.dim,
                                  transformer=Linformer(dim=cfg.dim, seq_len=cfg.seq_len, depth=1, heads=cfg.heads,
                                                        k=cfg.k))
    with pytest.raises((EinopsError, RuntimeError)):
        vit(torch.randn(1, 3, cfg.image_size, cfg.image_size), distill_token=torch.randn(1, cfg.dim))


def test_the_loss_is_the_mean_of_the_true_labels_and_the_teachers_top_class():
    torch.manual_seed(0)
    cls_logits, dist_logits = torch.randn(6, 2), torch.randn(6, 2)
    target, said = torch.tensor([0, 1, 1, 0, 1, 0]), torch.randn(6, 2)
    loss = distill.deit_loss((cls_logits, dist_logits), target, said, label_smoothing=0.1)
    expected = (F.cross_entropy(cls_logits, target, label_smoothing=0.1)
                + F.cross_entropy(dist_logits, said.argmax(-1))) / 2
    torch.testing.assert_close(loss, expected)
    # hard distillation: only the teacher's top class counts, not how sure it is
    torch.testing.assert_close(distill.deit_loss((cls_logits, dist_logits), target, said * 10, 0.1), loss)


def test_a_teacher_and_a_distillation_token_come_together():
    with pytest.raises(PresetError, match="teacher"):
        SAMPLE.replace(teacher="cnn")
    with pytest.raises(PresetError, match="teacher"):
        SAMPLE.replace(model=STUDENT)
    with pytest.raises(PresetError, match="teacher must be"):
        SAMPLE.replace(model=STUDENT, teacher="")
    preset = with_settings(SAMPLE, {"teacher": "cnn", "model.distill": True})
    assert preset.teacher == "cnn" and preset.model.distill


def test_a_distillation_token_is_a_vits():
    with pytest.raises(ValueError, match="family 'vit'"):
        SAMPLE.model.replace(family="cnn", stem="conv", distill=True)
    with pytest.raises(ValueError, match="true or false"):
        SAMPLE.model.replace(distill="yes")


def test_a_missing_teacher_is_one_line_naming_it(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match=r"nowhere\.pt': no such checkpoint") as e:
        distill.load_teacher(str(tmp_path / "nowhere.pt"), 32)
    assert "\n" not in str(e.value)


def cnn_checkpoint(path, image_size=32, num_classes=2):
    """A (untrained) small CNN saved as a vitlib checkpoint: a teacher for the sample's 32 px photos."""
    cfg = SAMPLE.model.replace(family="cnn", stem="conv", image_size=image_size, patch_size=8, num_classes=num_classes)
    torch.manual_seed(1)
    model = build_model(cfg)
    checkpoints.save_checkpoint(path, {"format": checkpoints.CHECKPOINT_FORMAT, "model_config": cfg.__dict__,
                                       "model": model.state_dict(), "data": "test", "data_id": {}})
    return model


def test_a_teacher_of_another_task_is_refused_in_one_line(tmp_path):
    """Before, a teacher of 10 classes failed mid-training: "IndexError: Target 9 is out of bounds"."""
    cnn_checkpoint(tmp_path / "t.pt", num_classes=10)
    with pytest.raises(checkpoints.CheckpointError, match="answers 10 classes, not the 2 of Dogs vs Cats") as e:
        distill.load_teacher(str(tmp_path / "t.pt"), 32)
    assert "\n" not in str(e.value)


def test_a_teacher_of_another_resolution_is_refused(tmp_path):
    cnn_checkpoint(tmp_path / "t.pt", image_size=64)
    with pytest.raises(checkpoints.CheckpointError, match="64 px photos and the student 32 px"):
        distill.load_teacher(str(tmp_path / "t.pt"), 32)


def test_the_distillation_head_learns_what_the_teacher_says_and_the_class_head_the_labels():
    """A teacher that always says "cat" on dog photos: the two heads part ways, each after its own target."""
    torch.manual_seed(0)
    model = build_model(STUDENT)

    class SaysCat(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[5.0, -5.0]]).expand(len(x), 2)

    preset = SAMPLE.replace(model=STUDENT, teacher="cnn", lr=3e-3)
    precision = Precision.of(torch.device("cpu"), mixed=False)
    opt = train.make_optimizer(model, preset)
    state = train.TrainingState(model.train(), opt, None, precision.scaler(), preset.grad_clip)
    x, dogs = torch.randn(8, 3, 32, 32), torch.ones(8, dtype=torch.long)
    for _ in range(30):
        train.train_step(state, x, dogs, precision, train.make_loss(preset, teacher=SaysCat()))
    cls_logits, dist_logits = model(x)
    assert (cls_logits.argmax(-1) == 1).all() and (dist_logits.argmax(-1) == 0).all()


def test_fit_distils_from_a_teacher_which_it_leaves_as_it_was(tmp_path):
    teacher = cnn_checkpoint(tmp_path / "teacher.pt")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    folder = sample.write_sample(tmp_path / "src", n_train=64, n_test=4)
    ds = data.prepare_data(folder, dest=tmp_path / "ds", verbose=False)
    preset = SAMPLE.replace(epochs=2, model=STUDENT, teacher=str(tmp_path / "teacher.pt"))
    run = train.fit(preset, train.prepare_training_data(ds, preset, "cpu"), run_dir=tmp_path / "run", progress=False)
    assert len(run.history) == 2
    after = checkpoints.load_checkpoint(tmp_path / "teacher.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    model, meta = checkpoints.load_model(tmp_path / "run" / "best.pt")
    assert isinstance(model, DistilledViT) and meta["preset"]["teacher"] == str(tmp_path / "teacher.pt")
    assert run.val_predictions(model)["p_raw"].between(0, 1).all()


def test_a_damaged_teacher_is_refused_with_advice_for_a_teacher_not_for_a_run_folder(tmp_path):
    """A teacher's error once said "move it away (or choose another run_dir) and train again"."""
    damaged = tmp_path / "teacher.pt"
    damaged.write_bytes(b"not a checkpoint at all")
    with pytest.raises(checkpoints.CheckpointError) as error:
        distill.load_teacher(str(damaged), 32)
    assert "run_dir" not in str(error.value) and "use another" in str(error.value)
