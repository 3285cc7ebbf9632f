"""The landmark backend on a drawn face (fast), plus one run on real assets when ../shared is present."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from reenact.animate.base import BACKENDS, Backend, DriverFrame, SourceFace, create_backend
from reenact.animate.landmark import MEAN_FACE, LandmarkBackend, _lift, _rotate, _z, fit_pose, fit_similarity, swing
from reenact.face.pose import eye_opening, mouth_opening, yaw

SHARED = Path(__file__).resolve().parents[2] / "shared"

# A frontal face's 68 iBUG landmarks in a 256 crop (closed mouth, open eyes).
FACE = np.array([
    [61, 103], [64, 121], [68, 137], [73, 153], [79, 169], [89, 183], [100, 196], [114, 206], [129, 209],
    [143, 204], [160, 195], [173, 183], [183, 169], [190, 152], [193, 134], [195, 115], [195, 98],
    [68, 95], [77, 90], [88, 93], [98, 97], [107, 101], [132, 100], [143, 95], [154, 90], [166, 88], [178, 90],
    [120, 110], [120, 122], [120, 133], [120, 144], [113, 151], [117, 153], [123, 154], [128, 152], [133, 150],
    [83, 110], [90, 106], [99, 107], [105, 112], [98, 113], [89, 113],
    [140, 110], [146, 104], [155, 103], [163, 106], [156, 110], [149, 111],
    [104, 170], [112, 167], [119, 164], [125, 166], [130, 163], [140, 164], [151, 165], [141, 175],
    [132, 181], [127, 182], [120, 182], [113, 178],
    [108, 171], [119, 171], [126, 171], [131, 170], [145, 167], [131, 170], [126, 172], [120, 171],
], np.float32)


def drawn_face(lm: np.ndarray, size: int = 256) -> np.ndarray:
    """A textured background, a skin-coloured face, dark eyes and red lips at the landmarks."""
    rng = np.random.default_rng(0)
    image = (rng.random((size, size, 3)) * 40 + 90).astype(np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 2)
    hull = cv2.convexHull(np.concatenate([lm[:27], lm[17:27] - (0, 30)]).astype(np.int32))
    cv2.fillConvexPoly(image, hull, (220, 180, 150), cv2.LINE_AA)
    for eye in (slice(36, 42), slice(42, 48)):
        cv2.fillPoly(image, [lm[eye].astype(np.int32)], (40, 30, 30), cv2.LINE_AA)
    cv2.fillPoly(image, [lm[48:60].astype(np.int32)], (190, 70, 80), cv2.LINE_AA)
    return image


def prepared(size: int = 256, **options) -> tuple[LandmarkBackend, np.ndarray, np.ndarray]:
    lm = FACE * size / 256
    image = drawn_face(lm, size)
    backend = LandmarkBackend(size=size, **options)
    backend.prepare(SourceFace(image, lm), DriverFrame(0, lm, image))
    return backend, image, lm


def open_mouth(lm: np.ndarray, by: float) -> np.ndarray:
    out = lm.copy()
    out[[55, 56, 57, 58, 59, 65, 66, 67]] += (0, by)
    out[5:12] += (0, by * 0.6)
    return out


def test_registered_and_protocol():
    assert "landmark" in BACKENDS
    backend = create_backend("landmark", size=256)
    assert isinstance(backend, Backend)
    assert backend.needs_driver_images  # the driver's irises (gaze)
    # The mouth is the source's or drawn: without gaze, landmarks are enough.
    assert not create_backend("landmark", size=256, gaze=0).needs_driver_images
    assert create_backend("landmark", size=256, gaze=0, driver_mouth=True).needs_driver_images


def test_shape_and_dtype():
    for size in (256, 512):
        backend, _, lm = prepared(size)
        out = backend.animate([DriverFrame(i, lm) for i in range(3)])
        assert out.shape == (3, size, size, 3) and out.dtype == np.uint8


def test_reference_frame_gives_the_source():
    backend, image, lm = prepared()
    out = backend.animate([DriverFrame(0, lm, image)])[0]
    assert np.abs(out.astype(int) - image).mean() < 0.5


def test_driver_at_another_place_and_size_still_gives_the_source():
    """Relative motion: a reference and frame that agree mean no motion, wherever the driver's face is."""
    backend = LandmarkBackend(size=256)
    image = drawn_face(FACE)
    driver = FACE * 0.7 + (30, 10)
    backend.prepare(SourceFace(image, FACE), DriverFrame(0, driver))
    target, _, _ = backend.targets(driver)
    assert np.abs(target - FACE).max() < 1e-3


def test_mouth_opening_moves_the_lips_and_fills_the_mouth():
    backend, image, lm = prepared()
    opened = open_mouth(lm, 14)
    target, _, _ = backend.targets(opened)
    assert mouth_opening(target) > mouth_opening(lm) + 0.15
    assert target[57, 1] > lm[57, 1] + 10 and abs(target[51, 1] - lm[51, 1]) < 3
    driver_image = drawn_face(opened)
    cv2.fillPoly(driver_image, [opened[60:68].astype(np.int32)], (30, 10, 10))  # a dark open mouth
    out = backend.animate([DriverFrame(1, opened, driver_image)])[0]
    inside = np.zeros((256, 256), np.uint8)
    cv2.fillPoly(inside, [cv2.convexHull(target[60:68].astype(np.int32))], 1)
    inside = cv2.erode(inside, np.ones((3, 3), np.uint8)) > 0
    lips = np.zeros((256, 256), np.uint8)
    cv2.fillPoly(lips, [target[48:60].astype(np.int32)], 1)
    lips = (lips > 0) & ~inside
    interior = out[inside].astype(float)
    assert np.abs(interior.mean(0) - out[lips].mean(0)).max() > 40  # a mouth, not stretched lips
    assert interior.std() > 25  # teeth and a shaded cavity, not a flat hole


def test_mouth_fill_without_driver_images():
    backend, image, lm = prepared(driver_mouth=False, gaze=0)
    assert not backend.needs_driver_images
    opened = open_mouth(lm, 14)
    out = backend.animate([DriverFrame(1, opened)])[0]
    target, _, _ = backend.targets(opened)
    c = target[[62, 66]].mean(0).astype(int)
    assert out[c[1] + 2, c[0]].mean() < 100  # dark cavity under the teeth band


def test_blink_closes_the_eyes():
    backend, image, lm = prepared()
    shut = lm.copy()
    for upper, lower in [(37, 41), (38, 40), (43, 47), (44, 46)]:
        shut[upper] = shut[lower] - (0, 1)
    target, _, _ = backend.targets(shut)
    assert eye_opening(target) < 0.5 * eye_opening(lm)  # the warp narrows the eye; a painted lid closes it
    out = backend.animate([DriverFrame(1, shut, image)])[0]
    for eye in (slice(36, 42), slice(42, 48)):
        box = lm[eye].mean(0).astype(int)
        before = image[box[1] - 2:box[1] + 3, box[0] - 3:box[0] + 4].mean()
        after = out[box[1] - 2:box[1] + 3, box[0] - 3:box[0] + 4].mean()
        assert before < 80 and after > 95  # the dark eye (about 35) is covered by skin (about 180) and a lash line


def test_warp_fades_to_identity_at_the_border():
    backend, image, lm = prepared()
    a, b = complex(np.exp(0.15j) * 1.1), complex(25, -15)  # a big head move: turn, grow, shift
    moved = _z(lm) * a + b
    moved = np.stack([moved.real, moved.imag], 1).astype(np.float32)
    out = backend.animate([DriverFrame(1, moved, image)])[0].astype(int)
    band = 4
    for edge in (np.s_[:band], np.s_[-band:], np.s_[:, :band], np.s_[:, -band:]):
        assert np.abs(out[edge] - image[edge]).max() <= 2
    assert np.abs(out - image).mean() > 5  # while the face did move
    target, _, _ = backend.targets(moved)
    aa, _ = fit_similarity(_z(lm), _z(target))
    assert abs(np.angle(aa) - 0.15) < 0.02 and abs(abs(aa) - 1.1) < 0.02


def test_unknown_option_is_an_error():
    from reenact.errors import ReenactError

    with pytest.raises(ReenactError):
        LandmarkBackend(size=256, wiggle=3)


@pytest.mark.slow
def test_real_driver_mouth_and_identity():
    """Taylor animated by 3 s of vox_driving2: the output's re-detected mouth follows the driver's."""
    if not (SHARED / "assets").is_dir():
        pytest.skip("../shared/assets is missing (real portraits and drivers live there)")
    from reenact.face.align import Crop, face_box
    from reenact.face.detect import FaceDetector, FaceEmbedder
    from reenact.face.pose import closest_pose
    from reenact.media.video import iter_frames

    detector, embedder = FaceDetector(), FaceEmbedder()
    source = cv2.cvtColor(cv2.imread(str(SHARED / "assets/portraits/taylor.png")), cv2.COLOR_BGR2RGB)
    face = detector.detect(source)[0]
    crop = Crop.from_box(face_box(face.landmarks), 256)
    source_face = SourceFace(crop.apply(source), crop.to_crop(face.landmarks))
    frames = []
    for i, image in zip(range(75), iter_frames(SHARED / "assets/drivers/vox_driving2.mp4")):
        frames.append(DriverFrame(i, detector.detect(image)[0].landmarks, image))  # 256x256: the crop
    lms = np.stack([f.landmarks for f in frames])
    backend = LandmarkBackend(size=256)
    backend.prepare(source_face, frames[closest_pose(lms, source_face.landmarks)])
    out = backend.animate(frames)
    faces = [detector.detect(o) for o in out]
    assert all(faces)
    got = np.stack([f[0].landmarks for f in faces])
    assert np.corrcoef(mouth_opening(got), mouth_opening(lms))[0, 1] > 0.8
    reference = embedder.embed(source_face.image, detector.detect(source_face.image)[0])
    distances = [np.linalg.norm(embedder.embed(o, f[0]) - reference) for o, f in zip(out[::10], faces[::10])]
    assert np.median(distances) < 0.4


def test_paste_mask_covers_everything_the_warp_touches():
    backend, image, lm = prepared()
    moved = lm * 1.1 + (20, -10)
    out = backend.animate([DriverFrame(1, moved, image)])[0]
    changed = np.abs(out.astype(int) - image).max(-1) > 0
    mask = backend.paste_mask()
    assert mask.shape == (256, 256) and mask.dtype == np.float32
    assert mask[changed].min() > 0.99 and mask[0, 0] < 0.05


def test_degenerate_driver_landmarks_do_not_break_the_frame():
    backend, image, lm = prepared()
    for bad in (np.full_like(lm, 100.0), np.full_like(lm, np.nan), lm * 10):
        out = backend.animate([DriverFrame(1, bad, image)])[0]
        assert np.isfinite(out).all() and np.abs(out.astype(int) - image).mean() < 1.0


def _eye_darkness(image: np.ndarray, lm: np.ndarray) -> float:
    boxes = [lm[eye].mean(0).astype(int) for eye in (slice(36, 42), slice(42, 48))]
    return float(np.mean([image[y - 2:y + 3, x - 3:x + 4].mean() for x, y in boxes]))


def test_closed_eye_driver_gives_a_closed_eye_output_against_its_own_open_baseline():
    """Eyelids follow the eye aspect ratio relative to the driver's own open eyes, down to fully closed
    (a painted, skin-coloured lid), whether or not the reference frame had its eyes fully open."""
    lm = FACE.copy()
    image = drawn_face(lm)
    half = lm.copy()  # a reference caught with half-shut eyes
    for upper, lower in [(37, 41), (38, 40), (43, 47), (44, 46)]:
        half[upper] = (half[upper] + half[lower]) / 2 - (0, 0.5)
    backend = LandmarkBackend(size=256)
    backend.prepare(SourceFace(image, lm), DriverFrame(0, half))
    opened = backend.animate([DriverFrame(i, lm) for i in range(1, 20)])  # the driver's eyes are usually open
    assert _eye_darkness(opened[-1], lm) < 80  # the source's eyes stay open
    shut = lm.copy()
    for upper, lower in [(37, 41), (38, 40), (43, 47), (44, 46)]:
        shut[upper] = shut[lower] - (0, 1.5)  # dlib's shut eye: lids close, not quite together
    closed = backend.animate([DriverFrame(20, shut)])[0]
    assert _eye_darkness(closed, lm) > 110  # skin (and a lash line), not the dark eye (about 40)
    skin = image[int(lm[29, 1]), int(lm[29, 0]) - 20].astype(float)  # cheek skin colour
    centre = lm[36:42].mean(0).astype(int)
    assert np.abs(closed[centre[1] - 2, centre[0]] - skin).max() < 40


def _talking(lm: np.ndarray, drops: np.ndarray, hidden: bool) -> list[np.ndarray]:
    """Frames of a talking mouth: the lower lip's outline and the chin drop by `drops`; the inner lips open
    with them (bare mouth) or stay together (a moustache hides the gap)."""
    frames = []
    for d in drops:
        f = lm.copy()
        f[[55, 56, 57, 58, 59]] += (0, 1.4 * d)
        f[5:12] += (0, 0.8 * d)
        if not hidden:
            f[[65, 66, 67]] += (0, d)
        frames.append(f)
    return frames


def test_jaw_drop_opens_a_mouth_whose_inner_lips_stay_closed():
    """A moustache hides the gap: on a driver whose lower lip and chin go up and down while the inner lips stay
    together, the lower lip's and chin's drop open the mouth; with jaw_opening=0 they do not."""
    drops = 18 * np.abs(np.sin(np.arange(30) / 3.0))
    opened = {}
    for jaw in (1.0, 0.0):
        backend, image, lm = prepared(jaw_opening=jaw)
        gaps = [mouth_opening(backend.targets(f)[0]) - mouth_opening(lm) for f in _talking(lm, drops, hidden=True)]
        opened[jaw] = np.array(gaps)
    late = slice(12, None)  # after the first frames the backend has seen the gap stay shut while the lip moves
    assert np.corrcoef(opened[1.0][late], drops[late])[0, 1] > 0.9
    assert opened[1.0][late].max() > 0.12
    assert np.abs(opened[0.0]).max() < 0.05


def test_jaw_drop_alone_does_not_open_a_bare_mouth():
    """On a bare mouth the gap follows the lower lip; a later drop of the lower lip and chin without the gap
    (a nod, pushed-out lips) leaves the mouth as the gap says (tpsmm_driving's closed mouth was held open)."""
    backend, image, lm = prepared()
    drops = 12 * np.abs(np.sin(np.arange(30) / 3.0))
    for f in _talking(lm, drops, hidden=False):
        backend.targets(f)
    pushed = _talking(lm, [10.0], hidden=True)[0]
    assert mouth_opening(backend.targets(pushed)[0]) < mouth_opening(lm) + 0.03


def test_drawn_mouth_has_teeth_and_shading_not_a_flat_hole():
    backend, image, lm = prepared()
    opened = open_mouth(lm, 18)
    out = backend.animate([DriverFrame(1, opened)])[0].astype(float)
    target, _, _ = backend.targets(opened)
    x = int(target[[62, 66], 0].mean())
    top, bottom = int(target[62, 1]), int(target[66, 1])
    column = out[top + 1:bottom - 1, x - 1:x + 2].mean(axis=(1, 2))
    assert column[:4].max() > 130 and column.min() < 0.5 * column[:4].max()  # teeth, then a darker cavity
    teeth = out[top + 1:top + 5, x].reshape(-1, 3)
    assert np.ptp(teeth[teeth.mean(1).argmax()]) < 40  # whitish, not lip-red


def test_source_that_shows_its_teeth_keeps_them():
    """A source whose mouth is open on white teeth: the opened mouth shows those teeth, not drawn ones."""
    lm = open_mouth(FACE, 8)
    image = drawn_face(lm)
    cv2.fillPoly(image, [lm[60:68].astype(np.int32)], (60, 20, 20))
    cv2.rectangle(image, (int(lm[61, 0]) - 6, int(lm[62, 1])), (int(lm[63, 0]) + 6, int(lm[62, 1]) + 3), (250, 250, 250), -1)
    backend = LandmarkBackend(size=256)
    backend.prepare(SourceFace(image, lm), DriverFrame(0, lm))
    wide = open_mouth(lm, 14)
    out = backend.animate([DriverFrame(1, wide)])[0]
    target, _, _ = backend.targets(wide)
    x, y = int(target[62, 0]), int(target[62, 1])
    column = out[y:y + 5, x].astype(int)
    assert column.min(1).max() > 200 and np.ptp(column[column.min(1).argmax()]) < 30  # white, as in the source


def test_mean_face_pose_fit_recovers_a_turn():
    for angle in (-25, -10, 10, 25):
        r = swing(np.array([np.sin(np.deg2rad(angle)), 0.0, np.cos(np.deg2rad(angle))]))
        pts = (MEAN_FACE @ r.T)[:, :2] * 60 + 128
        rot, scale, _ = fit_pose(pts)
        assert np.abs(rot - r).max() < 0.01 and abs(scale - 60) < 1


def test_head_turn_moves_parts_with_parallax():
    """Yaw is a rotation: the nose tip moves further than the eyes' outer corners, and the output's yaw
    proxy follows the driver's at the turn's gain (0.8; a 2-D warp of the residual reached about 0.4)."""
    backend, image, lm = prepared()
    p3, centre, _ = _lift(lm)
    turned = _rotate(p3, centre, swing(np.array([np.sin(0.35), 0.0, np.cos(0.35)])))
    driver = np.stack([turned.real, turned.imag], 1).astype(np.float32)
    target, _, _ = backend.targets(driver)
    for _ in range(10):  # let the steadiness filter settle
        target, _, _ = backend.targets(driver)
    gain = (yaw(target) - yaw(lm)) / (yaw(driver) - yaw(lm))
    assert 0.7 < gain < 1.1
    nose, corners = target[30, 0] - lm[30, 0], (target[[36, 45], 0] - lm[[36, 45], 0]).mean()
    assert abs(nose) > abs(corners) + 3
    out = backend.animate([DriverFrame(1, driver)])[0]
    assert np.abs(out[:8].astype(int) - image[:8]).max() <= 2  # the border (and hair above) stays put


def test_gaze_moves_the_irises():
    """The driver looks to the side: the source's dark irises move the same way inside the eye openings."""
    def eyes_with_irises(lm: np.ndarray, shift: float) -> np.ndarray:
        image = drawn_face(lm)
        for eye in (slice(36, 42), slice(42, 48)):
            cv2.fillPoly(image, [lm[eye].astype(np.int32)], (235, 235, 230), cv2.LINE_AA)
            c = lm[eye].mean(0) + (shift, 0)
            cv2.circle(image, (int(round(c[0])), int(round(c[1]))), 3, (30, 20, 20), -1, cv2.LINE_AA)
        return image

    lm = FACE.copy()
    source = eyes_with_irises(lm, 0)
    backend = LandmarkBackend(size=256, steady=1.0)
    backend.prepare(SourceFace(source, lm), DriverFrame(0, lm, eyes_with_irises(lm, 0)))
    out = backend.animate([DriverFrame(1, lm, eyes_with_irises(lm, 4))])[0]

    def iris_x(image: np.ndarray, eye: slice) -> float:
        x0, y0 = lm[eye].min(0).astype(int)
        x1, y1 = lm[eye].max(0).astype(int) + 1
        dark = 255.0 - image[y0:y1, x0:x1].mean(-1)
        dark = np.clip(dark - 100, 0, None)
        return float((dark.sum(0) * np.arange(x0, x1)).sum() / dark.sum())

    for eye in (slice(36, 42), slice(42, 48)):
        assert iris_x(out, eye) > iris_x(source, eye) + 1.5
