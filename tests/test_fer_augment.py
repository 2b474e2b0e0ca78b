"""The FER training augmentation (scripts/fer_augment.py) does what it claims, measured on real
faces (CK+48 crops): the exposure curve, the resolution lost, the noise added, the JPEG loss
ordered by quality, the occluded share of the crop, and the chain's shape, range and seeding."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from redsg_edge.datasets import load_ck48

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import fer_augment as aug  # noqa: E402


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """(8, 48, 48) float32: one real face per 100 CK+48 images."""
    return np.stack([r.image.astype(np.float32) for r in load_ck48()[::100][:8]])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def detail(img: np.ndarray) -> float:
    """Power of the 4-neighbour Laplacian: the fine detail of an image."""
    lap = 4 * img[1:-1, 1:-1] - img[:-2, 1:-1] - img[2:, 1:-1] - img[1:-1, :-2] - img[1:-1, 2:]
    return float(np.mean(lap.astype(np.float64) ** 2))


@pytest.mark.parametrize("g, grey, expected", [(2.0, 127.5, 63.75), (0.5, 63.75, 127.5),
                                               (1.0, 90.0, 90.0), (2.0, 255.0, 255.0),
                                               (0.5, 0.0, 0.0)])
def test_gamma_maps_grey_levels_by_the_power_law(g, grey, expected):
    out = aug.gamma(np.full((48, 48), grey, np.float32), g)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_gamma_keeps_the_order_of_grey_levels(faces):
    for g in (0.5, 2.0):
        out = aug.gamma(faces[0], g)
        order = np.argsort(faces[0], axis=None, kind="stable")
        assert np.all(np.diff(out.ravel()[order]) >= -1e-3)


@pytest.mark.parametrize("side", [12, 24, 32])
def test_low_resolution_removes_fine_detail_and_keeps_the_mean(faces, side):
    for face in faces:
        out = aug.low_resolution(face, side)
        assert out.shape == (48, 48)
        assert abs(out.mean() - face.mean()) < 1.5
        assert detail(out) < 0.5 * detail(face)
    # Fewer sensor pixels, less detail.
    assert detail(aug.low_resolution(faces[0], 12)) < detail(aug.low_resolution(faces[0], 32))


@pytest.mark.parametrize("sigma", [2.0, 6.0, 10.0])
def test_sensor_noise_has_the_claimed_standard_deviation(sigma):
    grey = np.full((48, 48), 128.0, np.float32)  # no clipping at mid-grey for these sigmas
    diff = np.concatenate([(aug.sensor_noise(grey, sigma, np.random.default_rng(s)) - grey).ravel()
                           for s in range(20)])
    assert abs(diff.std() / sigma - 1) < 0.03
    assert abs(diff.mean()) < 0.1


def test_sensor_noise_stays_in_the_pixel_range(faces):
    out = aug.sensor_noise(faces[0], 10.0, np.random.default_rng(0))
    assert out.min() >= 0 and out.max() <= 255


def test_jpeg_loses_more_at_lower_quality(faces):
    for face in faces:
        q15, q75 = aug.jpeg(face, 15), aug.jpeg(face, 75)
        assert q15.shape == (48, 48) and q15.dtype == np.float32
        assert psnr(face, q15) < psnr(face, q75) < 60  # lossy at both, less so at 75
        assert psnr(face, q15) > 20  # still the same face


@pytest.mark.parametrize("kind, low, high", [("hand", 0.08, 0.24), ("cutout", 0.08, 0.40),
                                             ("glasses", 0.02, 0.15)])
def test_occluders_cover_the_claimed_share_of_the_crop(kind, low, high):
    rng = np.random.default_rng(1)
    shares = [aug.occlusion_mask(kind, rng).mean() for _ in range(200)]
    # Pixel rounding of the drawn shapes moves a share by a pixel row at most.
    assert min(shares) >= low - 0.02 and max(shares) <= high + 0.02, (min(shares), max(shares))


def test_a_hand_enters_from_an_edge_and_glasses_sit_at_eye_height():
    rng = np.random.default_rng(2)
    for _ in range(50):
        hand = aug.occlusion_mask("hand", rng)
        assert hand[-1].any() or hand[:, 0].any() or hand[:, -1].any()
        rows = np.nonzero(aug.occlusion_mask("glasses", rng).any(1))[0]
        assert 8 <= rows.min() and rows.max() <= 28  # between brow and nose tip in FER framing


def test_unknown_occluder_is_refused():
    with pytest.raises(ValueError, match="occluder 'scarf'"):
        aug.occlusion_mask("scarf", np.random.default_rng(0))


def test_occlude_sets_only_the_masked_pixels(faces):
    mask = aug.occlusion_mask("cutout", np.random.default_rng(3))
    out = aug.occlude(faces[0], mask, 200.0, 0.0, np.random.default_rng(3))
    np.testing.assert_array_equal(out[~mask], faces[0][~mask])
    np.testing.assert_allclose(out[mask], 200.0)


def test_chain_keeps_shape_range_and_is_seeded(faces):
    batch = faces[..., None]
    a = aug.Augmenter()(batch, np.random.default_rng(7))
    b = aug.Augmenter()(batch, np.random.default_rng(7))
    assert a.shape == batch.shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    off = aug.Augmenter(0, 0, 0, 0, 0)(batch, np.random.default_rng(7))
    np.testing.assert_array_equal(off, batch)
    every = aug.Augmenter(1, 1, 1, 1, 1)(batch, np.random.default_rng(7))
    assert all(psnr(f, e) < 30 for f, e in zip(faces, every[..., 0]))
