"""The uint8 image cache: decoded once, reused while the files are unchanged, and unreadable images skipped."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from vitlib import cache as cache_mod
from vitlib import data, files
from vitlib.cache import build_cache, load_image
from vitlib.data import DataWarning


def save(path, color, size=(20, 14), mode="RGB", fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, fmt)
    return path


@pytest.fixture
def ds(tmp_path):
    """Four tiny photos, each one flat colour, so a cached image says which file it came from."""
    root = tmp_path / "ds"
    colors = {"cat.1.jpg": (250, 0, 0), "cat.2.jpg": (0, 250, 0), "dog.1.jpg": (0, 0, 250), "dog.2.jpg": (250, 250, 0)}
    for name, color in colors.items():
        save(root / "train" / name, color)
    return data.DogsVsCats("ds", "local", root, root / "train", None, None)


def mean_colour(images: torch.Tensor) -> np.ndarray:
    return images.float().mean((2, 3)).numpy()


def test_load_image_gives_rgb_uint8_and_squashes_to_size(tmp_path):
    grey = save(tmp_path / "grey.jpg", 128, mode="L")
    rgba = save(tmp_path / "rgba.png", (10, 20, 30, 0), mode="RGBA", fmt="PNG")
    for path in (grey, rgba):
        full = load_image(path)
        assert full.dtype == np.uint8 and full.shape == (14, 20, 3)
    assert load_image(rgba, size=8).shape == (8, 8, 3)
    np.testing.assert_array_equal(load_image(rgba, size=8)[0, 0], [10, 20, 30])  # alpha dropped, colour kept


def test_a_large_jpeg_is_decoded_small_and_still_right(tmp_path):
    path = save(tmp_path / "big.jpg", (200, 100, 50), size=(800, 600))
    small = load_image(path, size=32)
    assert small.shape == (32, 32, 3)
    np.testing.assert_allclose(small.reshape(-1, 3).mean(0), [200, 100, 50], atol=3)


def test_the_cache_holds_every_image_with_its_label_id_and_file(ds, tmp_path):
    index = data.index_images(ds)
    cache = build_cache(ds, index, size=8, cache_dir=tmp_path / "cache", workers=2)
    assert cache.images.dtype == torch.uint8 and cache.images.shape == (4, 3, 8, 8)
    assert cache.files == list(index["file"]) and len(cache) == 4 and cache.size == 8 and cache.nbytes == 4 * 3 * 64
    assert cache.labels.tolist() == [0, 0, 1, 1] and cache.ids.tolist() == [1, 2, 1, 2]
    np.testing.assert_allclose(mean_colour(cache.images), [[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]],
                               atol=4)
    assert cache.skipped == []


def test_test_images_get_label_minus_one(ds, tmp_path):
    save(ds.root / "test" / "1.jpg", (9, 9, 9))
    ds = data.DogsVsCats("ds", "local", ds.root, ds.train_dir, ds.root / "test", None)
    cache = build_cache(ds, data.index_images(ds, "test"), 8, part="test", cache_dir=tmp_path / "cache")
    assert cache.labels.tolist() == [-1] and cache.ids.tolist() == [1]


def test_a_second_build_reads_the_cache_and_a_changed_file_rebuilds_it(ds, tmp_path, monkeypatch):
    index = data.index_images(ds)
    first = build_cache(ds, index, 8, cache_dir=tmp_path / "cache")
    written = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert written == [".ds-train-8px.pt.lock", "ds-train-8px.pt"]  # the cache, and the lock that lets one process
    # decode while the others (torchrun's, a second notebook's) wait for it

    def must_not_decode(path, size=None):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(cache_mod, "load_image", must_not_decode)
        again = build_cache(ds, index, 8, cache_dir=tmp_path / "cache")
    torch.testing.assert_close(again.images, first.images)
    assert again.files == first.files

    save(ds.train_dir / "cat.1.jpg", (0, 0, 0), size=(30, 30))  # a new file under the same name
    rebuilt = build_cache(ds, index, 8, cache_dir=tmp_path / "cache")
    assert mean_colour(rebuilt.images)[0].max() < 5
    other_size = build_cache(ds, index, 4, cache_dir=tmp_path / "cache")
    assert other_size.images.shape[-1] == 4


def test_corrupt_and_truncated_jpegs_are_reported_and_skipped(ds, tmp_path):
    good = (ds.train_dir / "dog.1.jpg").read_bytes()
    (ds.train_dir / "cat.2.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (ds.train_dir / "dog.2.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # corrupt
    index = data.index_images(ds)
    with pytest.warns(DataWarning, match=r"Skipped 2 unreadable image\(s\).*train/cat\.2\.jpg.*train/dog\.2\.jpg"):
        cache = build_cache(ds, index, 8, cache_dir=tmp_path / "cache")
    assert cache.files == ["train/cat.1.jpg", "train/dog.1.jpg"]
    assert cache.labels.tolist() == [0, 1] and len(cache.images) == 2
    assert cache.skipped == ["train/cat.2.jpg", "train/dog.2.jpg"]
    with pytest.warns(DataWarning, match="Skipped 2"):  # said again when read from disk
        build_cache(ds, index, 8, cache_dir=tmp_path / "cache")


def test_select_picks_readable_files_in_the_order_given(ds, tmp_path):
    cache = build_cache(ds, data.index_images(ds), 8, cache_dir=tmp_path / "cache")
    part = cache.select(["train/dog.2.jpg", "train/missing.jpg", "train/cat.1.jpg"])
    assert part.files == ["train/dog.2.jpg", "train/cat.1.jpg"]
    assert part.labels.tolist() == [1, 0]
    torch.testing.assert_close(part.images, cache.images[[3, 0]])
    moved = part.to("cpu")
    assert moved.files == part.files and moved.images.device.type == "cpu"


def test_the_default_cache_folder_follows_vitlib_data_dir(ds, tmp_path, monkeypatch):
    monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    build_cache(ds, data.index_images(ds), 8)
    assert sorted(os.listdir(tmp_path / "elsewhere" / "cache")) == [".ds-train-8px.pt.lock", "ds-train-8px.pt"]


def test_a_damaged_cache_file_is_rebuilt_not_a_crash(ds, tmp_path):
    index = data.index_images(ds)
    first = build_cache(ds, index, 8, cache_dir=tmp_path / "cache")
    (tmp_path / "cache" / "ds-train-8px.pt").write_bytes(b"half a cache")
    rebuilt = build_cache(ds, index, 8, cache_dir=tmp_path / "cache")
    torch.testing.assert_close(rebuilt.images, first.images)


def test_the_cache_is_built_in_its_final_layout_and_select_keeps_the_skipped(ds, tmp_path):
    (ds.train_dir / "dog.9.jpg").write_bytes(b"not a jpeg")
    index = data.index_images(ds)
    with pytest.warns(data.DataWarning):
        built = build_cache(ds, index, 8, cache_dir=tmp_path / "cache")
    assert built.images.is_contiguous() and built.images.shape == (4, 3, 8, 8)
    assert built.select(built.files[:2]).skipped == ["train/dog.9.jpg"]


def test_a_cache_larger_than_half_the_memory_is_refused_before_decoding(monkeypatch):
    """At 4096 px the 500 sample images alone are 25 GB: refused in one line, nothing allocated or written."""
    from vitlib import cache as caching

    monkeypatch.setattr(caching, "memory_bytes", lambda: 24 * 2**30)
    with pytest.raises(caching.DataError, match=r"500 train images cached at 4096 px would take 23\.4 GiB.*"
                                                r"model\.image_size"):
        caching.check_cache_fits(500, 4096)
    caching.check_cache_fits(25_000, 224)  # the full competition at the seed's size: 3.5 GiB, fine


def test_a_cache_folder_that_is_a_file_is_one_line_before_decoding(ds, tmp_path):
    """Before: "[Errno 17] File exists" from mkdir."""
    a_file = tmp_path / "cache"
    a_file.write_text("mine")
    index = data.index_images(ds)
    with pytest.raises(files.PlaceError, match=r"the cache folder .*is a file, not a folder") as e:
        build_cache(ds, index, 16, cache_dir=a_file)
    assert "\n" not in str(e.value) and a_file.read_text() == "mine"
