"""Rendering of the built-in videos: moving textured objects over a panned background, frame by frame.

``render_clip`` draws one clip from a random generator: the background (a smooth colour field with a
fine grain, panned by the camera), the main object and an optional distractor (a shape with its
class's texture family, moving, scaling and spinning), transient clutter, the changing light and a
drifting focus. Everything else (files, manifests, the data set's random streams) lives in
``vito_fast.synthetic.videos``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

# class id -> (shape, texture family); the class name is "<shape>-<texture>"
CLASS_DEFINITIONS: Tuple[Tuple[str, str], ...] = (
    ("disc", "stripes"),
    ("square", "checker"),
    ("triangle", "dots"),
    ("star", "rings"),
    ("cross", "zigzag"),
    ("ring", "waves"),
    ("hexagon", "grid"),
    ("diamond", "spiral"),
)

PALETTE_LIGHT = np.array([[0.95, 0.85, 0.55], [0.7, 0.9, 0.95], [0.95, 0.7, 0.8]])
PALETTE_DARK = np.array([[0.15, 0.1, 0.3], [0.3, 0.12, 0.08], [0.05, 0.25, 0.15]])
CAMERA_SPEED = (0.1, 0.4)  # camera pan, pixels per frame at 96 px (scaled with the frame's short side)


def background_textures(seed: int, num_backgrounds: int, size: Tuple[int, int], num_frames: int,
                        max_camera_speed: float = CAMERA_SPEED[1]) -> List[np.ndarray]:
    """The ``num_backgrounds`` textures that the videos of ``generate_dataset(seed=seed, ...)`` share."""
    return [_Background.texture(np.random.default_rng([seed, 2 ** 32 - 1 - k]), size[0], size[1], num_frames,
                                max_camera_speed) for k in range(num_backgrounds)]


def shared_background(textures: List[np.ndarray], seed: int, video_index: int
                      ) -> Optional[Tuple[np.ndarray, np.random.Generator]]:
    """``render_clip``'s ``shared_background`` for video ``video_index`` (None when there are no textures)."""
    if not textures:
        return None
    camera_rng = np.random.default_rng([seed, video_index, 1])
    return textures[int(camera_rng.integers(len(textures)))], camera_rng


@dataclass
class RenderedClip:
    """A clip before encoding: frames (T, H, W, 3) uint8, masks (T, H, W) uint8, tracks."""

    frames: np.ndarray
    instances: np.ndarray
    classes: np.ndarray
    centers: np.ndarray  # (T, objects, 2) float32, (x, y) pixels
    radii: np.ndarray  # (T, objects) float32, pixels


def render_clip(rng: np.random.Generator, class_id: int, distractor_class_id: Optional[int], *,
                num_frames: int, size: Tuple[int, int],
                shared_background: Optional[Tuple[np.ndarray, np.random.Generator]] = None,
                object_scale: float = 1.0, camera_speed: Tuple[float, float] = CAMERA_SPEED,
                light_change: float = 0.0, texture_class_id: Optional[int] = None,
                clutter: int = 0, clutter_rng: Optional[np.random.Generator] = None,
                num_classes: int = len(CLASS_DEFINITIONS), focus_change: float = 0.0,
                focus_rng: Optional[np.random.Generator] = None, texture_fade: float = 0.0,
                fade_rng: Optional[np.random.Generator] = None) -> RenderedClip:
    """Render one clip: the main object of ``class_id`` and an optional distractor, over a moving background.

    ``shared_background``: (a texture from ``_Background.texture``, a generator for where the camera
    starts on it) replaces the clip's own background texture; the clip's camera motion and its
    objects are the same either way (``rng`` draws them in the same order). ``camera_speed`` and
    ``light_change``: see ``generate_dataset``. ``texture_class_id``: the main object wears that
    class's texture instead of its own (a cue-conflict clip: the random draws, so the motion, the
    colours and the masks, are those of the ordinary clip). ``clutter``: that many transient objects
    of the first ``num_classes`` classes, drawn from ``clutter_rng`` (see ``generate_dataset``),
    painted in front; the masks keep 0 there. ``focus_change``: the camera's focus drifts, blurring
    whole frames by a Gaussian of up to that many pixels (at 96 px) on a schedule drawn from
    ``focus_rng``; masks are those of the sharp scene. ``texture_fade``: the main object's texture
    contrast drops by up to that share and comes back over the clip (schedule from ``fade_rng``), as
    shading and glare wash out surface detail while the outline stays.
    """
    height, width = size
    short_side = min(height, width)
    background = _Background(rng, height, width, num_frames, camera_speed)
    if shared_background is not None:
        background.use_texture(*shared_background)
    main_radii = (0.17 * object_scale, 0.24 * object_scale)
    distractor_radii = (0.11 * object_scale, 0.16 * object_scale)
    objects = [_MovingObject(rng, class_id, main_radii, short_side, height, width, num_frames, texture_class_id)]
    if texture_fade > 0:
        objects[0].texture_contrast = 1.0 - texture_fade * (1.0 - _slow_cycle(fade_rng, num_frames, 1.0))
    if distractor_class_id is not None:
        objects.append(_MovingObject(rng, distractor_class_id, distractor_radii, short_side, height, width,
                                     num_frames))
    distractor_in_front = bool(rng.random() < 0.5)
    light = _light_gains(rng, num_frames, light_change)
    blur = _slow_cycle(focus_rng, num_frames, focus_change * short_side / 96) if focus_change > 0 else None
    # painting order: back to front
    order = [0, 1] if len(objects) == 1 or distractor_in_front else [1, 0]
    order = order[: len(objects)]
    transients = [_TransientObject(clutter_rng, num_classes, short_side, height, width, num_frames, object_scale)
                  for _ in range(clutter)]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    instances = np.zeros((num_frames, height, width), np.uint8)
    classes = np.zeros((num_frames, height, width), np.uint8)
    centers = np.zeros((num_frames, len(objects), 2), np.float32)
    radii = np.zeros((num_frames, len(objects)), np.float32)
    for time in range(num_frames):
        image = background.frame(time)
        for object_index in order:
            moving = objects[object_index]
            inside, colours = moving.render(time, xs, ys)
            image[inside] = colours[inside]
            instances[time][inside] = object_index + 1
            classes[time][inside] = moving.class_id + 1
            centers[time, object_index] = moving.center(time)
            radii[time, object_index] = moving.radius(time)
        for transient in transients:
            if transient.visible(time):
                inside, colours = transient.object.render(time, xs, ys)
                image[inside] = colours[inside]
                instances[time][inside] = 0
                classes[time][inside] = 0
        if blur is not None and blur[time] > 0.05:
            from scipy.ndimage import gaussian_filter

            image = gaussian_filter(image, sigma=(blur[time], blur[time], 0), mode="reflect")
        frames[time] = np.clip(image * light[time] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return RenderedClip(frames, instances, classes, centers, radii)


def _slow_cycle(rng: np.random.Generator, num_frames: int, amplitude: float) -> np.ndarray:
    """(T,) amplitude · (½ + ½ sin(2π t / period + phase)), one cycle in about one to two clips: from 0 to
    ``amplitude`` and back within a clip (the focus drift's blur widths, the texture fade's depth)."""
    period = rng.uniform(1.0, 2.0) * num_frames
    phase = rng.uniform(0, 2 * math.pi)
    time = np.arange(num_frames, dtype=np.float64)
    return amplitude * (0.5 + 0.5 * np.sin(2 * math.pi * time / period + phase))


def _light_gains(rng: np.random.Generator, num_frames: int, amplitude: float) -> np.ndarray:
    """(T, 3) colour gains of the light: 1 + amplitude · sin(2π t / period + phase) per channel.

    Drawn only when ``amplitude`` > 0, so that constant light leaves the random stream as it was.
    """
    if amplitude <= 0:
        return np.ones((num_frames, 3), np.float32)
    period = rng.uniform(0.75, 1.5) * num_frames
    phases = rng.uniform(0, 2 * math.pi, size=3)
    time = np.arange(num_frames, dtype=np.float64)[:, None]
    return (1 + amplitude * np.sin(2 * math.pi * time / period + phases)).astype(np.float32)


class _Background:
    """A smooth colour field plus fine texture, larger than the frame, panned by a drifting camera."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, num_frames: int,
                 camera_speed: Tuple[float, float] = CAMERA_SPEED):
        speed = rng.uniform(*camera_speed) * min(height, width) / 96  # pixels per frame
        angle = rng.uniform(0, 2 * math.pi)
        self.velocity = np.array([math.cos(angle), math.sin(angle)]) * speed
        margin = int(math.ceil(speed * num_frames)) + 2
        self.margin, self.height, self.width = margin, height, width
        self.field = self._field(rng, height + 2 * margin, width + 2 * margin, min(height, width))

    @classmethod
    def texture(cls, rng: np.random.Generator, height: int, width: int, num_frames: int,
                max_camera_speed: float = CAMERA_SPEED[1]) -> np.ndarray:
        """A texture large enough for any camera of a (height, width, num_frames) clip to pan over."""
        margin = int(math.ceil(max_camera_speed * min(height, width) / 96 * num_frames)) + 2  # the fastest camera
        return cls._field(rng, height + 2 * margin, width + 2 * margin, min(height, width))

    def use_texture(self, texture: np.ndarray, rng: np.random.Generator) -> None:
        """Pan over (a random window of) ``texture`` instead of this background's own field."""
        needed_height, needed_width = self.field.shape[:2]
        top = int(rng.integers(texture.shape[0] - needed_height + 1))
        left = int(rng.integers(texture.shape[1] - needed_width + 1))
        self.field = texture[top:top + needed_height, left:left + needed_width]

    @staticmethod
    def _field(rng: np.random.Generator, full_height: int, full_width: int, short_side: int) -> np.ndarray:
        height = width = short_side
        ys, xs = np.mgrid[0:full_height, 0:full_width].astype(np.float32)
        base = rng.uniform(0.25, 0.75, size=3).astype(np.float32)
        field = np.broadcast_to(base, (full_height, full_width, 3)).copy()
        for _ in range(3):  # low-frequency colour waves
            wave_angle, wavelength = rng.uniform(0, 2 * math.pi), rng.uniform(0.6, 1.5) * min(height, width)
            phase = rng.uniform(0, 2 * math.pi)
            wave = np.sin((xs * math.cos(wave_angle) + ys * math.sin(wave_angle)) * 2 * math.pi / wavelength + phase)
            field += 0.12 * wave[..., None] * rng.uniform(-1, 1, size=3).astype(np.float32)
        grain_angle, grain_period = rng.uniform(0, math.pi), rng.uniform(2.5, 5.0)
        grain = np.sin((xs * math.cos(grain_angle) + ys * math.sin(grain_angle)) * 2 * math.pi / grain_period)
        across = ys * math.cos(grain_angle) - xs * math.sin(grain_angle)
        grain = grain * np.sin(across * 2 * math.pi / (2.1 * grain_period))
        field += 0.05 * grain[..., None]
        return np.clip(field, 0.0, 1.0)

    def frame(self, time: int) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1] seen by the camera at frame ``time``."""
        offset_x, offset_y = np.rint(self.velocity * time).astype(int) + self.margin
        return self.field[offset_y:offset_y + self.height, offset_x:offset_x + self.width].copy()


class _MovingObject:
    """One textured object: bouncing straight-line motion, sinusoidal scaling, constant rotation."""

    def __init__(self, rng: np.random.Generator, class_id: int, radius_range: Tuple[float, float], short_side: int,
                 height: int, width: int, num_frames: int, texture_class_id: Optional[int] = None):
        self.class_id = class_id
        self.shape, self.texture = CLASS_DEFINITIONS[class_id]
        if texture_class_id is not None:  # a cue-conflict object: this class's shape, another's texture
            self.texture = CLASS_DEFINITIONS[texture_class_id][1]
        self.base_radius = rng.uniform(*radius_range) * short_side
        self.scale_amplitude, self.scale_period = rng.uniform(0.1, 0.3), rng.uniform(16, 48)
        self.scale_phase = rng.uniform(0, 2 * math.pi)
        self.rotation, self.spin = rng.uniform(0, 2 * math.pi), rng.uniform(-0.08, 0.08)
        # colours: one light, one dark, so the texture always shows; from a small palette shared by
        # all classes (plus a little jitter), so that colour tells neither the class nor the instance
        # (the entry and the jitter come from the uniform draws of earlier versions: same random stream)
        light, dark = rng.uniform(0.55, 1.0, size=3), rng.uniform(0.0, 0.4, size=3)
        self.light = _palette_colour(PALETTE_LIGHT, (light - 0.55) / 0.45)
        self.dark = _palette_colour(PALETTE_DARK, dark / 0.4)
        if rng.random() < 0.5:
            self.light, self.dark = self.dark, self.light
        self.frequency, self.texture_phase = rng.uniform(1.6, 2.4), rng.uniform(0, 1)
        # the centre bounces inside the frame shrunk by 0.6 radius: objects may leave it partly
        speed = rng.uniform(0.6, 2.0) * short_side / 96
        angle = rng.uniform(0, 2 * math.pi)
        low = 0.6 * self.base_radius
        self.bounds = np.array([[low, width - low], [low, height - low]], np.float64)
        start = np.array([rng.uniform(*self.bounds[0]), rng.uniform(*self.bounds[1])])
        self.track = _bouncing_track(start, np.array([math.cos(angle), math.sin(angle)]) * speed, self.bounds,
                                     num_frames)

    texture_contrast: Optional[np.ndarray] = None  # (T,) in (0, 1]; None: full contrast

    def center(self, time: int) -> np.ndarray:
        return self.track[time]

    def radius(self, time: int) -> float:
        return self.base_radius * (1 + self.scale_amplitude * math.sin(2 * math.pi * time / self.scale_period
                                                                       + self.scale_phase))

    def render(self, time: int, xs: np.ndarray, ys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(inside mask (H, W) bool, colours (H, W, 3) float32) of the object at frame ``time``."""
        radius, angle = self.radius(time), self.rotation + self.spin * time
        center_x, center_y = self.track[time]
        dx, dy = (xs - center_x) / radius, (ys - center_y) / radius
        u = dx * math.cos(angle) + dy * math.sin(angle)  # object coordinates: the texture moves with it
        v = -dx * math.sin(angle) + dy * math.cos(angle)
        inside = _shape_inside(self.shape, u, v)
        weight = _texture(self.texture, u * self.frequency + self.texture_phase,
                          v * self.frequency + self.texture_phase)
        if self.texture_contrast is not None:  # shading that washes the texture out, towards its mean colour
            weight = 0.5 + (weight - 0.5) * self.texture_contrast[time]
        colours = self.dark + weight[..., None] * (self.light - self.dark)
        return inside, colours


class _TransientObject:
    """Clutter that does not persist: a small object of a random class, visible for a few frames.

    It enters at a random frame, stays 2 to max(2, T/4) frames and moves fast (2-4 px a frame at
    96 px), as passers-by, leaves or birds do in real footage: in a pair of frames Δt apart it is
    usually in one frame only, while the main object is in both.
    """

    def __init__(self, rng: np.random.Generator, num_classes: int, short_side: int, height: int, width: int,
                 num_frames: int, object_scale: float):
        class_id = int(rng.integers(num_classes))
        self.object = _MovingObject(rng, class_id, (0.09 * object_scale, 0.14 * object_scale), short_side, height,
                                    width, num_frames)
        speed = rng.uniform(2.0, 4.0) * short_side / 96
        angle = rng.uniform(0, 2 * math.pi)
        self.object.track = _bouncing_track(self.object.track[0], np.array([math.cos(angle), math.sin(angle)]) * speed,
                                            self.object.bounds, num_frames)
        length = int(rng.integers(2, max(2, num_frames // 4) + 1))
        self.start = int(rng.integers(0, max(1, num_frames - length + 1)))
        self.end = self.start + length

    def visible(self, time: int) -> bool:
        return self.start <= time < self.end


def _palette_colour(palette: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Entry of ``palette`` picked by unit[0] in [0, 1), shifted by up to ±0.05 per channel by unit[1:] (and unit[0])."""
    entry = palette[min(int(unit[0] * len(palette)), len(palette) - 1)]
    jitter = 0.1 * (np.array([unit[1], unit[2], (unit[0] * len(palette)) % 1.0]) - 0.5)
    return np.clip(entry + jitter, 0.0, 1.0).astype(np.float32)


def _bouncing_track(start: np.ndarray, velocity: np.ndarray, bounds: np.ndarray, num_frames: int) -> np.ndarray:
    """(T, 2) positions of a point moving at ``velocity`` and reflecting off ``bounds`` [[x0, x1], [y0, y1]]."""
    track = np.empty((num_frames, 2))
    position, velocity = start.astype(np.float64).copy(), velocity.astype(np.float64).copy()
    for time in range(num_frames):
        track[time] = position
        position = position + velocity
        for axis in range(2):
            low, high = bounds[axis]
            if position[axis] < low:
                position[axis], velocity[axis] = 2 * low - position[axis], -velocity[axis]
            elif position[axis] > high:
                position[axis], velocity[axis] = 2 * high - position[axis], -velocity[axis]
    return track


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether object coordinates (u, v) (unit = the object's radius) fall inside ``shape``."""
    radius = np.hypot(u, v)
    polar = np.arctan2(v, u)
    if shape == "disc":
        return radius <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape in ("triangle", "hexagon"):
        sides, inradius = (3, 0.62) if shape == "triangle" else (6, 0.9)
        inside = np.ones_like(u, dtype=bool)
        for side in range(sides):
            normal = 2 * math.pi * side / sides - math.pi / 2
            inside &= u * math.cos(normal) + v * math.sin(normal) <= inradius
        return inside
    if shape == "star":
        sector = (polar * 5 / (2 * math.pi) + 0.25) % 1.0  # 0 and 1 at the tips
        tip_closeness = np.abs(sector * 2 - 1)  # 1 at tips, 0 between them
        return radius <= 0.5 + 0.6 * tip_closeness
    if shape == "cross":
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    if shape == "ring":
        return (radius <= 1.0) & (radius >= 0.5)
    if shape == "diamond":
        return np.abs(u) / 0.75 + np.abs(v) <= 1.05
    raise ValueError(f"synthetic data: unknown shape {shape!r}")


def _texture(family: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture weight in [0, 1] at scaled object coordinates (u, v) for a texture ``family``."""
    two_pi = 2 * math.pi
    if family == "stripes":
        return (np.sin(two_pi * u * 1.5) > 0).astype(np.float32)
    if family == "checker":
        return ((np.floor(u * 1.5) + np.floor(v * 1.5)) % 2).astype(np.float32)
    if family == "dots":
        return ((np.cos(two_pi * u * 1.5) * np.cos(two_pi * v * 1.5)) > 0.35).astype(np.float32)
    if family == "rings":
        return (np.sin(two_pi * np.hypot(u - 0.5, v - 0.5) * 1.5) > 0).astype(np.float32)
    if family == "zigzag":
        return (np.sin(two_pi * (v * 1.5 + 0.5 * np.abs(((u * 1.5) % 1.0) * 2 - 1))) > 0).astype(np.float32)
    if family == "waves":
        return (np.sin(two_pi * (u * 1.5 + 0.25 * np.sin(two_pi * v))) > 0).astype(np.float32)
    if family == "grid":
        return ((np.abs(np.sin(two_pi * u)) < 0.4) | (np.abs(np.sin(two_pi * v)) < 0.4)).astype(np.float32)
    if family == "spiral":
        return (np.sin(np.arctan2(v, u) * 2 + two_pi * np.hypot(u, v) * 1.5) > 0).astype(np.float32)
    raise ValueError(f"synthetic data: unknown texture {family!r}")
