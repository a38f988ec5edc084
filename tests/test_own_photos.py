"""Your own photos: real image files (JPEG, PNG, an upload's bytes) predicted; text, truncated and missing files named
in one line without stopping the rest; the same from `python -m vitlib predict`."""

import io
import os
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vitlib import cli, own_photos
from vitlib.models import build_model
from vitlib.presets import get_preset


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder as a learner's might be: two real photos (JPEG, PNG), a text file, a truncated JPEG, a hidden file."""
    where = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(where / "a.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA").save(where / "b.png")
    (where / "notes.txt").write_text("not a photo")
    (where / "cut.jpg").write_bytes((where / "a.jpg").read_bytes()[:300])
    (where / ".DS_Store").write_bytes(b"\0\1")
    return where


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(get_preset("sample").model).eval()


def test_a_folder_gives_its_files_sorted_without_hidden_ones(folder):
    assert [p.name for p in own_photos.photo_files([folder])] == ["a.jpg", "b.png", "cut.jpg", "notes.txt"]
    with pytest.raises(own_photos.PhotoError, match="no-such.jpg: no such file or folder"):
        own_photos.photo_files([folder / "no-such.jpg"])


def test_a_pipe_or_a_link_to_nothing_is_named_for_what_it_is_not_missing(tmp_path):
    """Both were called "no such file or folder", though `ls` shows them."""
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(own_photos.PhotoError, match=r"pipe: not a file or a folder \(a pipe, socket or device\)"):
        own_photos.photo_files([tmp_path / "pipe"])
    with pytest.raises(own_photos.PhotoError, match=r"link.jpg: a link to .*gone.jpg, which does not exist"):
        own_photos.photo_files([tmp_path / "link.jpg"])


def test_a_photo_reads_the_same_from_a_path_and_from_an_upload(folder):
    from_path = own_photos.read_photo(folder / "b.png", 32)
    from_bytes = own_photos.read_photo((folder / "b.png").read_bytes(), 32)
    assert from_path.shape == (3, 32, 32) and from_path.dtype == torch.uint8  # RGBA made RGB, squashed to the square
    assert torch.equal(from_path, from_bytes)


@pytest.mark.parametrize("name, says", [("notes.txt", "notes.txt: not an image"), ("cut.jpg", "cut.jpg: unreadable")])
def test_a_file_that_is_no_readable_image_is_named_with_why(folder, name, says):
    with pytest.raises(own_photos.PhotoError, match=says) as e:
        own_photos.read_photo(folder / name, 32)
    assert "\n" not in str(e.value)


def test_unreadable_files_are_reported_and_the_photos_still_predicted(folder, model):
    files = own_photos.photo_files([folder])
    found = own_photos.predict_photos(model, {f.name: f for f in files}).set_index("photo")
    assert found.loc[["a.jpg", "b.png"], "p_dog"].between(0, 1).all()
    assert found.loc[["a.jpg", "b.png"], "problem"].isna().all()
    assert found.loc[["cut.jpg", "notes.txt"], "p_dog"].isna().all()
    assert found.loc["notes.txt", "problem"].startswith("notes.txt: not an image")
    assert set(found["answer"]) <= {"cat", "dog", ""} and found.loc["a.jpg", "answer"] == (
        "dog" if found.loc["a.jpg", "p_dog"] > 0.5 else "cat")


def test_the_upload_widget_value_becomes_named_bytes(folder, model):
    data = (folder / "a.jpg").read_bytes()
    upload = SimpleNamespace(value=({"name": "mine.jpg", "content": memoryview(data)},))  # ipywidgets 8
    photos = own_photos.uploaded_photos(upload)
    assert photos == {"mine.jpg": data}
    p = own_photos.predict_photos(model, photos)["p_dog"].iloc[0]
    q = own_photos.predict_photos(model, {"a.jpg": folder / "a.jpg"})["p_dog"].iloc[0]
    assert p == q  # the same photo, uploaded or from disk
    assert own_photos.uploaded_photos(None) == {}


def test_the_look_figure_shows_the_photo_and_its_rollout(folder):
    import matplotlib

    matplotlib.use("Agg")
    from vitlib.checkpoints import load_trained

    full, _ = load_trained(kind="full")
    fig = own_photos.show_look(folder / "a.jpg", 0.8, full, "a.jpg", size=64)
    assert "P(dog) = 0.80: a dog" in fig.axes[0].get_title()
    assert len(fig.axes) == 3  # the photo, the overlay, the colour bar


def test_the_command_line_predicts_photos_and_names_the_rest(folder, capsys):
    assert cli.main(["predict", str(folder), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(folder / "a.jpg"), str(folder / "b.png")]
    assert all(line.split("\t")[1].startswith("P(dog) = ") for line in lines)
    assert "skipped " + str(folder / "notes.txt") + ": not an image" in err and "cut.jpg: unreadable" in err


def test_the_command_line_exits_2_when_nothing_is_readable(folder, capsys):
    assert cli.main(["predict", str(folder / "notes.txt"), "--device", "cpu"]) == 2
    assert "error: none of the 1 file(s) is an image vitlib can read" in capsys.readouterr().err
    assert cli.main(["predict", str(folder / "missing.jpg")]) == 2
    assert capsys.readouterr().err.strip().endswith("missing.jpg: no such file or folder")


def test_predict_without_photos_needs_a_checkpoint(capsys):
    assert cli.main(["predict"]) == 2
    assert "predict needs --checkpoint" in capsys.readouterr().err


def test_bytes_that_are_no_image_say_the_upload():
    with pytest.raises(own_photos.PhotoError, match="the upload: not an image"):
        own_photos.read_photo(b"GIF89a but not really", 32)
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), "red").save(buf, "GIF")
    assert own_photos.read_photo(buf.getvalue(), 16)[0].float().mean() > 200  # red survives the palette


def test_without_upload_asked_nothing_waits_and_no_photo_is_chosen(monkeypatch):
    def dialog():
        raise AssertionError("the upload dialog must not open unless asked: it stops Run All")

    colab = types.ModuleType("google.colab")
    colab.files = SimpleNamespace(upload=dialog)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    chooser = own_photos.photo_chooser(False)
    assert chooser is None and own_photos.chosen_photos(chooser) == {}


def test_in_colab_the_dialog_opens_when_asked_and_its_files_become_named_bytes(folder, monkeypatch):
    data = (folder / "a.jpg").read_bytes()
    colab = types.ModuleType("google.colab")
    colab.files = SimpleNamespace(upload=lambda: {"mine.jpg": data})  # what google.colab.files.upload returns
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert own_photos.chosen_photos(own_photos.photo_chooser(True)) == {"mine.jpg": data}


def test_in_jupyter_asking_shows_an_upload_button_that_is_read_later(monkeypatch, capsys):
    pytest.importorskip("ipywidgets")
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    button = own_photos.photo_chooser(True)
    assert type(button).__name__ == "FileUpload" and button.multiple
    assert own_photos.chosen_photos(button) == {}  # nothing chosen yet: the notebook falls back to a test photo
