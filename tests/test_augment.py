"""Batch augmentation on the device: one random crop and flip per image, reproducible from a generator."""

import torch

from vitlib.augment import AugmentConfig, BatchAugment, crop_flip_grid, normalize


def images(batch=6, size=16, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen(seed))


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normalize_maps_uint8_to_minus_one_one():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x).flatten(), torch.tensor([-1.0, 51 / 127.5 - 1, 1.0]))


def test_the_full_crop_without_flip_is_the_identity():
    x = images()
    identity = BatchAugment(AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False))
    out, labels = identity(x, torch.arange(6), gen())
    torch.testing.assert_close(out, normalize(x))
    assert labels.tolist() == list(range(6))


def test_each_image_is_either_itself_or_its_mirror_and_both_happen():
    x = images(batch=32)
    flip_only = BatchAugment(AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True))
    out, _ = flip_only(x, torch.zeros(32, dtype=torch.long), gen())
    same = torch.isclose(out, normalize(x), atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(out, normalize(x).flip(-1), atol=1e-5).flatten(1).all(1)
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()


def test_every_image_gets_its_own_crop():
    x = images(batch=1).expand(8, -1, -1, -1)  # eight copies of one image
    out, _ = BatchAugment(AugmentConfig())(x, torch.zeros(8, dtype=torch.long), gen())
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) == 8


def test_the_same_generator_seed_gives_the_same_batch():
    x, y = images(), torch.arange(6)
    aug = BatchAugment(AugmentConfig(saturation=0.3))
    torch.testing.assert_close(aug(x, y, gen(1))[0], aug(x, y, gen(1))[0])
    assert not torch.allclose(aug(x, y, gen(1))[0], aug(x, y, gen(2))[0])


def test_the_crop_covers_the_requested_fraction_of_the_image():
    grid = crop_flip_grid(500, (0.25, 0.25), (1.0, 1.0), False, 8, "cpu", gen())
    width = grid[:, 0, -1, 0] - grid[:, 0, 0, 0]  # first to last sample in x, in [-1, 1] units
    # a crop of a quarter of the area is half the side: its samples span half of 2 * 7/8
    torch.testing.assert_close(width, torch.full((500,), 0.5 * 2 * 7 / 8))
    centres = grid.mean((1, 2))
    assert centres.abs().max() <= 0.5 + 1e-6  # the crop stays inside the image
    assert centres[:, 0].std() > 0.1  # and moves around


def test_saturation_leaves_grey_images_grey():
    grey = images(batch=4)[:, :1].expand(-1, 3, -1, -1)
    aug = BatchAugment(AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, saturation=0.5))
    out, _ = aug(grey, torch.zeros(4, dtype=torch.long), gen())
    torch.testing.assert_close(out, normalize(grey))


def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one():
    torch.manual_seed(0)  # torchvision's mixes draw from the global generator
    aug = BatchAugment(AugmentConfig(mixup=0.2, cutmix=1.0))
    x, y = images(batch=8), torch.tensor([0, 1] * 4)
    out, target = aug(x, y, gen())
    assert out.shape == (8, 3, 16, 16) and target.shape == (8, 2)
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    assert ((target > 0) & (target < 1)).any()


def test_without_mixes_labels_stay_hard():
    assert BatchAugment(AugmentConfig()).mix is None
    _, y = BatchAugment(AugmentConfig())(images(), torch.arange(6), gen())
    assert y.dtype == torch.long and y.tolist() == list(range(6))


def test_a_larger_cache_is_resampled_down_to_the_output_size():
    small = images(size=8)
    large = small.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # each pixel a 2x2 block
    whole = BatchAugment(AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False), size=8)
    out, _ = whole(large, torch.arange(6), gen())
    assert out.shape == (6, 3, 8, 8)
    torch.testing.assert_close(out, normalize(small))  # each output pixel is the mean of its 2x2 block
    cropped, _ = BatchAugment(AugmentConfig(scale=(0.5, 0.5)), size=8)(large, torch.arange(6), gen())
    assert cropped.shape == (6, 3, 8, 8)
