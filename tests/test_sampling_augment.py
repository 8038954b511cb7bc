"""Training data: nnU-Net v1 ``DataLoader3D`` sampling and the ``moreDA`` augmentation against their real peers.

Independent truth: the values read off the official trainer (``fixtures/train_step/train_step.json``), the
installed batchgenerators (the library nnU-Net v1's augmentation is built on; tests only) run on a real scan
(Colin27 + AAL labels from mricron-data, else the MNI152 of nilearn), and distributions over many draws.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import stats

from uniseg_hub.data import Case
from uniseg_hub.demo.data import mricron_dir, nilearn_data_dir
from uniseg_hub.training.augment import (
    AugmentationParams,
    NnUNetAugmentation,
    augment_batch,
    build_augmentation,
    gaussian_blur,
    simulate_low_resolution,
    spatial_transform,
)
from uniseg_hub.training.config import AugmentationConfig, TrainConfig
from uniseg_hub.training.sampling import PatchSampler, sample_class_locations, sampling_patch_size

bg_utils = pytest.importorskip("batchgenerators.augmentations.utils")
from batchgenerators.augmentations.color_augmentations import (  # noqa: E402
    augment_brightness_multiplicative,
    augment_contrast,
    augment_gamma,
)
from batchgenerators.augmentations.noise_augmentations import augment_gaussian_blur  # noqa: E402
from batchgenerators.augmentations.resample_augmentations import augment_linear_downsampling_scipy  # noqa: E402

TRAIN_STEP = Path(__file__).parent / "fixtures" / "train_step" / "train_step.json"
SAMPLE, PATCH = [85, 124, 102], [32, 64, 64]  # the official BTCV fixture's sampling and training patch


@pytest.fixture(scope="module")
def official() -> dict:
    return json.loads(TRAIN_STEP.read_text())["trainer"]


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, np.ndarray]:
    """A real head scan (z-scored, float32) and a real label map (int64) of shape SAMPLE; the first 6 slices are
    labelled -1 (outside the nonzero region) so that the -1 border and MaskTransform paths are exercised."""
    mricron, mni = mricron_dir(), nilearn_data_dir()
    if mricron is not None:
        img = nib.load(mricron / "ch2.nii.gz").get_fdata(dtype=np.float32)
        lab = np.asarray(nib.load(mricron / "aal.nii.gz").dataobj).astype(np.int64)
    elif mni is not None:
        img = nib.load(mni / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").get_fdata(dtype=np.float32)
        lab = np.digitize(img, np.quantile(img[img > 0], [0.25, 0.5, 0.75])).astype(np.int64)  # 4 tissue classes
    else:
        pytest.skip("needs mricron-data (Colin27/AAL) or nilearn's MNI152")
    lo = [(s - p) // 2 for s, p in zip(img.shape, SAMPLE)]
    box = tuple(slice(a, a + p) for a, p in zip(lo, SAMPLE))
    im, lb = img[box], lab[box].copy()
    lb[:6] = -1
    return ((im - im.mean()) / im.std()).astype(np.float32), lb


def _bg_spatial(image: np.ndarray, label: np.ndarray, angles, scale):
    """batchgenerators' augment_spatial steps for one sample with fixed angles and scale (order 3 / order 1)."""
    coords = bg_utils.create_zero_centered_coordinate_mesh(PATCH)
    coords = bg_utils.rotate_coords_3d(coords, *angles)
    coords = bg_utils.scale_coords(coords, scale)
    for d in range(3):
        coords[d] += image.shape[d] / 2.0 - 0.5
    data = bg_utils.interpolate_img(image, coords, 3, "constant", cval=0).astype(np.float32)
    seg = bg_utils.interpolate_img(label.astype(np.float32), coords, 1, "constant", cval=-1, is_seg=True)
    return data, seg


# ---- the official recipe values ----------------------------------------------------------------------------------
def test_sampling_patch_size_and_recipe_equal_the_official_trainer(official):
    aug, dap = AugmentationConfig(), official["data_aug_params"]
    assert sampling_patch_size(PATCH, aug) == official["basic_generator_patch_size"] == SAMPLE
    assert sampling_patch_size(PATCH, None) == PATCH
    assert sampling_patch_size(PATCH, AugmentationConfig(p_rot=0.0, p_scale=0.0)) == PATCH
    rad = math.radians(aug.rotation_deg)
    for axis in "xyz":
        assert dap[f"rotation_{axis}"] == pytest.approx([-rad, rad], abs=1e-15)
    assert (aug.p_rot, aug.p_scale, aug.p_gamma) == (dap["p_rot"], dap["p_scale"], dap["p_gamma"])
    assert aug.scale_range == dap["scale_range"] and aug.gamma_range == dap["gamma_range"]
    assert aug.mirror_axes == dap["mirror_axes"] and aug.rotation_p_per_axis == dap["rotation_p_per_axis"]
    assert aug.do_elastic is dap["do_elastic"] is False and aug.gamma_retain_stats is dap["gamma_retain_stats"]
    assert aug.independent_scale_per_axis is dap["independent_scale_factor_for_each_axis"]
    assert dap["do_rotation"] and dap["do_scaling"] and dap["do_gamma"] and dap["do_mirror"]
    assert not dap["do_additive_brightness"] and dap["patch_size_for_spatialtransform"] == PATCH
    assert TrainConfig().oversample_foreground == official["oversample_foreground_percent"]


# ---- exactness against batchgenerators ---------------------------------------------------------------------------
@pytest.mark.parametrize("angles, scale", [((0.3, -0.4, 0.2), 1.2), ((0.5, 0.5, 0.5), 1.4), ((0.0, 0.0, 0.0), 0.75)])
def test_spatial_transform_equals_batchgenerators(scan, angles, scale):
    image, label = scan
    data, seg = _bg_spatial(image, label, angles, scale)
    im_t, lb_t = torch.from_numpy(image[None]), torch.from_numpy(label)
    x64, y64 = spatial_transform(im_t, lb_t, PATCH, angles, scale, dtype=torch.float64)
    x32, y32 = spatial_transform(im_t, lb_t, PATCH, angles, scale)
    assert x32.shape == (1, *PATCH) and x32.dtype == torch.float32 and y32.dtype == torch.int64
    # float64 interpolation is scipy's algorithm: equal after the cast to float32 (measured: bitwise)
    assert np.abs(x64[0].numpy() - data).max() <= 2.4e-7  # 1 float32 ulp at |x| in [2, 4]
    # float32 coefficients and weights: measured 9.5e-7 (4 ulps at the scan's max |x| ~ 2.9)
    assert np.abs(x32[0].numpy() - data).max() <= 2e-6
    for y in (y64, y32):  # argmax of linearly interpolated one-hot maps, nearest-label tie break, -1 outside
        assert (y.numpy() != seg).mean() <= 1e-5  # measured 0
    assert np.isin(np.unique(seg), np.unique(label)).all()


def test_centre_crop_when_no_spatial_transform_fires(scan):
    image, label = scan
    x, y = spatial_transform(torch.from_numpy(image[None]), torch.from_numpy(label), PATCH)
    crop = bg_utils.center_crop_3D_image(image, PATCH)  # batchgenerators: lower corner (S - P) // 2
    lo = [(s - p) // 2 for s, p in zip(SAMPLE, PATCH)]
    assert np.array_equal(x[0].numpy(), image[lo[0]:lo[0] + 32, lo[1]:lo[1] + 64, lo[2]:lo[2] + 64])
    box = tuple(slice(a, a + p) for a, p in zip(lo, PATCH))
    assert crop.shape == tuple(PATCH) and np.array_equal(y.numpy(), label[box])


def _replay_low_high(seed: int, lo_hi, n: int) -> list[float]:
    """The values batchgenerators draws from np.random for n channels of a two-sided range (after seeding)."""
    np.random.seed(seed)
    out = []
    for _ in range(n):
        lo, hi = lo_hi
        low_half = np.random.random() < 0.5 and lo < 1
        out.append(np.random.uniform(lo, 1) if low_half else np.random.uniform(max(lo, 1), hi))
    return out


def test_intensity_transforms_equal_batchgenerators(scan):
    image, _ = scan
    x2 = np.stack([image[20:52, 30:78, 20:52], image[30:62, 40:88, 40:72][::-1] * 0.5 + 1]).astype(np.float32)
    pipe = NnUNetAugmentation(AugmentationConfig(), x2.shape[1:])

    def ours(**kw):  # one transform through NnUNetAugmentation.apply (no spatial transform: identity crop)
        x, _ = pipe.apply(torch.from_numpy(x2), torch.zeros(x2.shape[1:], dtype=torch.int64), AugmentationParams(**kw))
        return x.numpy()

    for sigma in (0.5, 0.77, 1.0):  # scipy gaussian_filter semantics: measured bitwise equal
        ref = augment_gaussian_blur(x2.copy(), (sigma, sigma), per_channel=True, p_per_channel=1)
        assert np.array_equal(ours(blur_sigma=[sigma, sigma]), ref)
        assert np.array_equal(gaussian_blur(torch.from_numpy(x2[0]), sigma).numpy(), ref[0])
    for zoom in (0.5, 0.63, 0.91):  # skimage resize order 0 down, order 3 up, clipped: measured bitwise equal
        ref = augment_linear_downsampling_scipy(x2.copy(), zoom_range=(zoom, zoom), per_channel=True, p_per_channel=1,
                                                order_downsample=0, order_upsample=3)
        assert np.array_equal(ours(lowres_zoom=[zoom, zoom]), ref)
        assert np.array_equal(simulate_low_resolution(torch.from_numpy(x2[1]), zoom).numpy(), ref[1])
    assert np.array_equal(ours(lowres_zoom=[None, 0.5])[0], x2[0])
    for seed in range(3):  # gamma (MONAI AdjustContrast): float32 reductions in another order, measured <= 4.8e-7
        for invert, key in ((True, "gamma_inverted"), (False, "gamma")):
            gammas = _replay_low_high(seed, (0.7, 1.5), 2)
            np.random.seed(seed)
            ref = augment_gamma(x2.copy(), (0.7, 1.5), invert, per_channel=True, retain_stats=True)
            assert np.abs(ours(**{key: gammas}) - ref).max() <= 1e-6
    for factors in ([0.8, 1.2], [1.1, 0.76]):  # contrast (MONAI ScaleIntensityFixedMean): measured 1 ulp
        it = iter(factors)
        ref = augment_contrast(x2.copy(), lambda: next(it), preserve_range=True, per_channel=True)
        assert np.abs(ours(contrast=factors) - ref).max() <= 2e-7
        np.random.seed(0)
        ref = augment_brightness_multiplicative(x2.copy(), (factors[0], factors[0]), per_channel=True)
        assert np.array_equal(ours(brightness=[factors[0]] * 2), ref)  # MONAI ScaleIntensity: bitwise


def test_apply_mirror_mask_and_remove_label(scan):
    image, label = scan
    pipe = NnUNetAugmentation(AugmentationConfig(), PATCH, mask_channels=(0,))
    im_t, lb_t = torch.from_numpy(np.stack([image, image + 5])), torch.from_numpy(label)
    angles = (0.5, 0.5, 0.5)  # with scale 1.4 the grid reaches the -1 slices and leaves the sample
    x_ref, y_ref = spatial_transform(im_t, lb_t, PATCH, angles, 1.4)
    x, y = pipe.apply(im_t, lb_t, AugmentationParams(rotation=angles, scale=1.4, mirror=(0, 2)))
    assert (y_ref == -1).any() and not (y < 0).any()
    assert torch.equal(y, torch.flip(torch.where(y_ref < 0, 0, y_ref), [0, 2]))
    masked = torch.flip(y_ref < 0, [0, 2])
    assert (x[0][masked] == 0).all() and torch.equal(x[0][~masked], torch.flip(x_ref[0], [0, 2])[~masked])
    assert torch.equal(x[1], torch.flip(x_ref[1], [0, 2]))  # channel 1 was normalised without the mask
    assert torch.equal(im_t[0], torch.from_numpy(image))  # the input is left alone


# ---- sampling ----------------------------------------------------------------------------------------------------
def _blob_case(name: str, shape=(40, 48, 48), fg_box=((14, 26), (18, 30), (18, 30)), channels=1, seed=0) -> Case:
    label = np.zeros(shape, np.int64)
    label[:, :2] = -1
    (a, b), (c, d), (e, f) = fg_box
    label[a:b, c:d, e:f] = 1
    label[a + 3:b - 3, c + 3:d - 3, e + 3:f - 3] = 2
    image = np.random.default_rng(seed).standard_normal((channels, *shape)).astype(np.float32)
    return Case(name, image, label, (1.0, 1.0, 1.0))


def test_foreground_forcing_per_batch_position():
    cases = [_blob_case("a"), _blob_case("b", seed=1)]
    rng = np.random.default_rng(0)
    expected = {2: [False, True], 5: [False, False, False, True, True], 1: [False], 3: [False, False, True]}
    for batch, forced in expected.items():
        sampler = PatchSampler(cases, [16, 16, 16], 0.33, sampling_patch_size=[24, 28, 28])
        for _ in range(30):
            b = sampler.sample(rng, batch)
            assert b.forced_fg == forced
            assert b.images.shape == (batch, 1, 24, 28, 28) and b.labels.dtype == np.int64
            centre = b.labels[:, 12, 14, 14]  # a forced patch is centred on a stored foreground voxel
            assert (centre[np.array(forced)] > 0).all()
    never = PatchSampler(cases, [16, 16, 16], 0.0)
    assert not any(any(never.sample(rng, 4).forced_fg) for _ in range(20))
    background_only = Case("empty", np.ones((1, 20, 20, 20), np.float32), np.zeros((20, 20, 20), np.int64), (1.0,) * 3)
    fallback = PatchSampler([background_only], [16, 16, 16], 1.0).sample(rng, 2)  # no foreground: random patch
    assert fallback.forced_fg == [False, False]


def test_random_placement_bounds_and_padding():
    small = _blob_case("small", shape=(10, 40, 20), fg_box=((3, 7), (10, 20), (5, 15)))
    sampler = PatchSampler([small], [8, 16, 16], 0.0, sampling_patch_size=[16, 24, 24])
    lb, ub = sampler.bounds(0)
    # need = S - P = 8 per axis; lb = -need // 2, ub = shape + need // 2 + need % 2 - S
    assert (lb, ub) == ([-4, -4, -4], [-2, 20, 0])
    tiny = _blob_case("tiny", shape=(3, 40, 5), fg_box=((0, 3), (10, 20), (0, 5)))
    # axes 0 and 2 are smaller than S - need: need is enlarged to S - shape (13 and 15)
    tiny_sampler = PatchSampler([tiny], [4, 16, 8], 0.0, sampling_patch_size=[16, 24, 20])
    assert tiny_sampler.bounds(0) == ([-7, -4, -8], [-6, 20, -7])
    rng = np.random.default_rng(1)
    seen = np.array([sampler._lower_corner(rng, 0, False)[0] for _ in range(600)])
    assert seen.min(0).tolist() == lb and seen.max(0).tolist() == ub
    b = sampler.sample(np.random.default_rng(2), 6)
    assert (b.labels == -1).any(axis=(1, 2, 3)).all() and (b.labels >= 0).any()
    # the region outside the case: image 0, label -1
    c = PatchSampler([small], [16, 24, 24], 0.0, sampling_patch_size=[16, 24, 24]).sample(np.random.default_rng(3), 1)
    outside_rows = c.labels[0, :3]  # the case (10 slices) sits in the middle of 16 -> 3 padded slices each side
    assert (outside_rows == -1).all() and (c.images[0, :, :3] == 0).all()


def test_class_locations_as_nnunet_preprocessing():
    label = np.zeros((60, 120, 240), np.int64)
    label[:, :, :200] = 3  # 1.44M voxels: ceil(1%) = 14400 > 10000 stored
    label[10:20, 10:60, 200:240] = 1  # 20000 voxels: 10000 stored
    label[0, 0, 239] = 7
    locs = sample_class_locations(label)
    rs = np.random.RandomState(1234)  # nnU-Net v1 preprocessing, written out
    for cls, n in ((1, 10000), (3, 14400), (7, 1)):
        where = np.argwhere(label == cls)
        expect = where[rs.choice(len(where), n, replace=False)]
        assert np.array_equal(locs[cls], expect)
        assert (label[tuple(locs[cls].T)] == cls).all() and len(np.unique(locs[cls], axis=0)) == n
    assert sorted(locs) == [1, 3, 7]


def test_part_slices_equal_the_whole_batch():
    cases = [_blob_case(f"c{i}", seed=i) for i in range(3)] + [_blob_case("two", channels=2)]
    sampler = PatchSampler(cases, [16, 16, 16], 0.33, sampling_patch_size=[20, 24, 24])
    always = AugmentationConfig(p_rot=1.0, p_scale=1.0, p_noise=1.0, p_blur=1.0, p_gamma=1.0)
    pipe = build_augmentation(always, [16, 16, 16])
    for seed in range(3):
        rng = np.random.default_rng(seed)
        whole = sampler.sample(rng, 4)
        assert len({im.shape[0] for im in whole.images}) == 1  # one channel count per batch
        wx, wy = augment_batch(pipe, whole.images, whole.labels, rng, patch_size=[16, 16, 16])
        state = rng.bit_generator.state
        for part in (slice(0, 2), slice(2, 4), slice(1, 3)):
            rng = np.random.default_rng(seed)
            b = sampler.sample(rng, 4, part=part)
            assert np.array_equal(b.images, whole.images[part]) and b.names == whole.names[part]
            x, y = augment_batch(pipe, b.images, b.labels, rng, patch_size=[16, 16, 16], global_batch=4, part=part)
            assert torch.equal(x, wx[part]) and torch.equal(y, wy[part])
            assert rng.bit_generator.state == state
        assert wx.shape == (4, whole.images.shape[1], 16, 16, 16) and wx.dtype == torch.float32 and (wy >= 0).all()


def test_same_rng_state_same_batch_and_no_pipeline():
    sampler = PatchSampler([_blob_case("a"), _blob_case("b", seed=4)], [16, 32, 32], sampling_patch_size=[30, 44, 40])
    pipe = build_augmentation(AugmentationConfig(p_rot=0.5, p_scale=0.5, p_lowres=1.0, p_contrast=1.0), [16, 32, 32])
    runs = []
    for _ in range(2):
        rng = np.random.default_rng(11)
        out = []
        for _ in range(3):
            b = sampler.sample(rng, 2)
            out.append(augment_batch(pipe, b.images, b.labels, rng, patch_size=[16, 32, 32]))
        runs.append(out)
    for (x1, y1), (x2, y2) in zip(*runs):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    rng = np.random.default_rng(0)
    b = sampler.sample(rng, 2)
    state = rng.bit_generator.state
    x, y = augment_batch(None, b.images, b.labels, rng, patch_size=[16, 32, 32])
    assert rng.bit_generator.state == state and x.shape == (2, 1, 16, 32, 32) and (y >= 0).all()
    assert torch.equal(x, torch.from_numpy(b.images[:, :, 7:23, 6:38, 4:36]))
    assert torch.equal(y, torch.from_numpy(np.maximum(b.labels[:, 7:23, 6:38, 4:36], 0)))


# ---- distributions of the draws ----------------------------------------------------------------------------------
def test_draws_follow_batchgenerators_distributions():
    aug, n = AugmentationConfig(), 20000
    pipe = NnUNetAugmentation(aug, PATCH)
    rng = np.random.default_rng(2024)
    draws = [pipe.draw(rng, 2) for _ in range(n)]

    def rate(values, p):  # observed rate within 5 binomial standard deviations of p
        k = len(values)
        assert abs(np.mean(values) - p) < 5 * math.sqrt(p * (1 - p) / k) + 1e-12, (np.mean(values), p)

    rad = math.radians(30)
    rate([d.rotation is not None for d in draws], 0.2)
    angles = np.array([d.rotation for d in draws if d.rotation is not None]).ravel()
    assert stats.kstest(angles, stats.uniform(-rad, 2 * rad).cdf).pvalue > 1e-3
    scales = np.array([d.scale for d in draws if d.scale is not None])
    rate([d.scale is not None for d in draws], 0.2)
    rate(scales < 1, 0.5)
    assert stats.kstest(scales[scales < 1], stats.uniform(0.7, 0.3).cdf).pvalue > 1e-3
    assert stats.kstest(scales[scales >= 1], stats.uniform(1.0, 0.4).cdf).pvalue > 1e-3
    rate([d.noise_std is not None for d in draws], 0.1)
    sd = np.array([d.noise_std for d in draws if d.noise_std is not None])
    assert stats.kstest(sd, stats.uniform(0, 0.1).cdf).pvalue > 1e-3
    blur = [d.blur_sigma for d in draws if d.blur_sigma is not None]
    rate([d.blur_sigma is not None for d in draws], 0.2)
    rate([s is not None for b in blur for s in b], 0.5)
    assert all(0.5 <= s <= 1 for b in blur for s in b if s is not None)
    fire = {"brightness": 0.15, "contrast": 0.15, "lowres_zoom": 0.25, "gamma_inverted": 0.1, "gamma": 0.3}
    for key, p in fire.items():
        rate([getattr(d, key) is not None for d in draws], p)
    rate([z is not None for d in draws if d.lowres_zoom for z in d.lowres_zoom], 0.5)
    gam = np.array([g for d in draws if d.gamma for g in d.gamma])
    rate(gam < 1, 0.5)
    assert gam.min() >= 0.7 and gam.max() <= 1.5
    bright = np.array([m for d in draws if d.brightness for m in d.brightness])
    assert stats.kstest(bright, stats.uniform(0.75, 0.5).cdf).pvalue > 1e-3
    for axis in (0, 1, 2):
        rate([axis in d.mirror for d in draws], 0.5)


def test_noise_has_the_drawn_sd():
    pipe = NnUNetAugmentation(AugmentationConfig(), [32, 32, 32])
    zero = torch.zeros(2, 32, 32, 32)
    label, params = torch.zeros(32, 32, 32, dtype=torch.long), AugmentationParams(noise_std=0.07, noise_seed=5)
    x, _ = pipe.apply(zero, label, params)
    assert abs(float(x.std()) - 0.07) < 0.002 and abs(float(x.mean())) < 0.002
    x2, _ = pipe.apply(zero, label, params)
    assert torch.equal(x, x2)
