"""Crop/paste-back geometry, pose proxies, tracking helpers."""

from __future__ import annotations


import numpy as np

from reenact.face import pose
from reenact.face.align import Crop, CropConfig, PasteBack, crop_mask, face_box, face_mask
from reenact.face.detect import _bridge, smooth_boxes, smooth_landmarks

def mean_face() -> np.ndarray:
    """A frontal 68-point face in iBUG order, about 2 units wide, centred near the nose."""
    k = np.arange(17)
    jaw = np.stack([-0.95 * np.cos(np.pi * k / 16), -0.2 + 1.3 * np.sin(np.pi * k / 16)], 1)
    bx = np.linspace(-0.78, -0.12, 5)
    left_brow = np.stack([bx, -0.5 - 0.1 * np.sin(np.linspace(0, np.pi, 5))], 1)
    right_brow = left_brow[::-1] * [-1, 1]
    bridge = np.stack([np.zeros(4), np.linspace(-0.32, 0.08, 4)], 1)
    lower_nose = np.array([[-0.15, 0.18], [-0.08, 0.21], [0, 0.23], [0.08, 0.21], [0.15, 0.18]])

    def eye(cx: float) -> np.ndarray:
        return np.array([[-0.16, 0], [-0.06, -0.06], [0.06, -0.06], [0.16, 0], [0.06, 0.05], [-0.06, 0.05]]) + [cx, -0.3]

    outer = np.array([[-0.35, 0.5], [-0.22, 0.43], [-0.08, 0.40], [0, 0.42], [0.08, 0.40], [0.22, 0.43], [0.35, 0.5],
                      [0.23, 0.60], [0.10, 0.65], [0, 0.66], [-0.10, 0.65], [-0.23, 0.60]])
    inner = np.array([[-0.30, 0.5], [-0.10, 0.49], [0, 0.49], [0.10, 0.49], [0.30, 0.5], [0.10, 0.51], [0, 0.51],
                      [-0.10, 0.51]])
    return np.concatenate([jaw, left_brow, right_brow, bridge, lower_nose, eye(-0.44), eye(0.44), outer, inner]
                          ).astype(np.float32)


MEAN_FACE = mean_face()
FACE = MEAN_FACE * 50 + 100


def test_mean_face_layout() -> None:
    assert FACE.shape == (68, 2)


def test_crop_round_trip_and_box() -> None:
    box = face_box(FACE, CropConfig(scale=2.0, shift_y=0.0))
    crop = Crop.from_box(box, 256)
    assert np.allclose(crop.to_full(crop.to_crop(FACE)), FACE, atol=1e-4)
    inside = crop.to_crop(FACE)
    assert inside.min() > 0 and inside.max() < 256  # the whole face is in the crop
    # face occupies about half the crop
    assert 100 < np.ptp(inside[:, 0]) < 160


def test_crop_apply_matches_matrix() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    image[90:110, 90:110] = 255
    crop = Crop(x0=50, y0=50, side=100, size=200)
    out = crop.apply(image)
    assert out[80:120, 80:120].mean() > 200 and out[:60].mean() == 0


def test_face_mask_is_feathered_and_zero_at_border() -> None:
    crop = Crop.from_box(face_box(FACE), 256)
    mask = face_mask(crop.to_crop(FACE), 256)
    assert mask.max() > 0.99 and mask.min() == 0
    assert mask[0].max() == 0 and mask[-1].max() == 0 and mask[:, 0].max() == 0 and mask[:, -1].max() == 0
    nose = crop.to_crop(FACE)[30].astype(int)
    assert mask[nose[1], nose[0]] > 0.99
    assert np.unique(np.round(mask, 2)).size > 20  # a soft edge, not a hard cut-out


def test_paste_back_identity_returns_background() -> None:
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (240, 320, 3), np.uint8)
    crop = Crop.from_box(face_box(FACE), 128)
    paste = PasteBack(background, crop)
    out = paste(crop.apply(background))
    assert out.shape == background.shape
    # Pasting the untouched crop back changes the image only by resampling blur inside the mask.
    assert np.abs(out.astype(int) - background.astype(int)).mean() < 20
    far = out[:, 300:]
    assert np.array_equal(far, background[:, 300:])


def test_paste_back_changes_only_the_face() -> None:
    background = np.full((240, 320, 3), 100, np.uint8)
    crop = Crop.from_box(face_box(FACE), 128)
    paste = PasteBack(background, crop, colour_match=False, mask=face_mask(crop.to_crop(FACE), 128))
    out = paste(np.full((128, 128, 3), 200, np.uint8))
    assert out[int(FACE[30, 1]), int(FACE[30, 0])].mean() > 190  # nose: the new crop
    assert out[5, 5].mean() == 100  # corner: untouched


def test_default_mask_covers_the_crop_and_fades_at_its_edge() -> None:
    mask = crop_mask(256)
    assert mask[128, 128] == 1 and mask[0].max() == 0 and mask[:, -1].max() == 0
    assert (mask > 0.99).mean() > 0.55 and 0 < mask[10, 128] < 1


def test_pose_proxies() -> None:
    assert abs(pose.roll(FACE)) < 1e-3
    assert abs(pose.yaw(FACE)) < 0.02
    opened = FACE.copy()
    opened[[65, 66, 67], 1] += 15
    opened[56:59, 1] += 15
    assert pose.mouth_opening(opened) > pose.mouth_opening(FACE) + 0.2
    closed = FACE.copy()
    closed[[37, 38, 43, 44], 1] = closed[[41, 40, 47, 46], 1]
    assert pose.eye_opening(closed) < 0.05 < pose.eye_opening(FACE)
    turned = FACE.copy()
    turned[27:36, 0] += 10
    assert pose.yaw(turned) > 0.05
    # rotation invariance of the expression proxies
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
    rotated = (FACE - 100) @ rot.T + 100
    assert abs(pose.roll(rotated) - a) < 1e-3
    assert abs(pose.mouth_opening(rotated) - pose.mouth_opening(FACE)) < 1e-4
    assert abs(pose.yaw(rotated) - pose.yaw(FACE)) < 1e-4


def test_closest_pose_prefers_matching_frame() -> None:
    frames = np.stack([FACE, FACE, FACE])
    frames[0, 27:36, 0] += 12  # turned
    frames[2, [65, 66, 67], 1] += 12  # mouth open
    assert pose.closest_pose(frames, FACE) == 1


def test_bridge_interpolates_and_holds() -> None:
    a, b = FACE, FACE + 10
    out = _bridge([None, a, None, b, None])
    assert np.allclose(out[0], a) and np.allclose(out[2], a + 5) and np.allclose(out[4], b)


def test_smoothing_keeps_a_blink_and_removes_jitter() -> None:
    rng = np.random.default_rng(1)
    n = 100
    track = np.repeat(FACE[None], n, 0) + rng.normal(0, 0.8, (n, 68, 2)).astype(np.float32)
    track[50:54, [37, 38, 43, 44], 1] += 6  # a 4-frame blink
    smooth = smooth_landmarks(track, 25, 0.2)
    jitter = lambda x: np.abs(np.diff(x[:40], 2, axis=0)).mean()
    assert jitter(smooth) < 0.5 * jitter(track)
    assert smooth[51:53, [37, 38, 43, 44], 1].mean() - FACE[[37, 38, 43, 44], 1].mean() > 4


def test_box_smoothing_is_steady() -> None:
    boxes = np.tile([100.0, 100.0, 200.0], (50, 1)) + np.random.default_rng(2).normal(0, 3, (50, 3))
    smooth = smooth_boxes(boxes, 25, 1.0)
    assert np.abs(np.diff(smooth, axis=0)).max() < 0.5


def test_closest_pose_avoids_frames_far_from_the_usual_head_position() -> None:
    frames = np.stack([FACE + 0.2 * k for k in range(9)] + [FACE + 60])  # last: same pose, far off
    frames[-1, [65, 66, 67], 1] -= 0.01  # and a hair closer to the source's mouth state
    assert pose.closest_pose(frames, FACE) != 9


def test_closest_pose_skips_a_frame_caught_mid_blink() -> None:
    """The best-matching pose with the eyes shut loses to a slightly worse one with them open (liax_driving5's
    reference was mid-blink: every later blink then read as open eyes)."""
    frames = np.stack([FACE + 0.0 for _ in range(6)])
    for k in range(6):
        frames[k, 27:36, 0] += 8.0 + k  # turned more in each frame ...
    frames[0, 27:36, 0] = FACE[27:36, 0]  # ... except the first, posed like the source ...
    for upper, lower in [(37, 41), (38, 40), (43, 47), (44, 46)]:
        frames[0, upper] = frames[0, lower] - (0, 0.5)  # ... whose eyes are shut
    assert pose.closest_pose(frames, FACE) == 1
