"""The built-in video settings are defined once: ``VideoSettings`` (the generator's), ``BuiltinVideos``
(their built-in values), read by ``generate_dataset``, ``dataset.json``, the demo's settings and its CLI."""
from __future__ import annotations

import dataclasses
import json

import pytest

from vito_fast.cli.demo import build_parser
from vito_fast.demo import DemoSettings
from vito_fast.synthetic.builtin import DEMO_OPTIONS, BuiltinVideos, videos_from_arguments
from vito_fast.synthetic.videos import VideoSettings


def test_every_setting_has_a_help_line_and_survives_json():
    settings = BuiltinVideos(focus_change=1.5, camera_speed=[1.0, 2.0])
    assert settings.camera_speed == (1.0, 2.0)
    for item in dataclasses.fields(VideoSettings):
        assert item.metadata["help"], item.name
    restored = VideoSettings.from_json(json.loads(json.dumps(settings.to_json())))
    assert dataclasses.asdict(restored) == dataclasses.asdict(settings)
    assert VideoSettings.from_json({"num_classes": 3}).focus_change == 0.0  # an older data set: the default


def test_the_demo_cli_offers_the_builtin_values():
    defaults = build_parser().parse_args([])
    assert videos_from_arguments(defaults) == BuiltinVideos()
    for name in DEMO_OPTIONS:
        value = getattr(BuiltinVideos(), name)
        assert getattr(defaults, name) == value
    asked = build_parser().parse_args(["--clutter", "0", "--camera-speed", "0.5", "1", "--focus-change", "2"])
    assert videos_from_arguments(asked) == BuiltinVideos(clutter=0, camera_speed=(0.5, 1.0), focus_change=2.0)


def test_the_demo_generates_the_builtin_videos_with_its_seed():
    settings = DemoSettings(seed=7, videos=BuiltinVideos(clutter=1))
    assert settings.data_settings() == dataclasses.asdict(BuiltinVideos(clutter=1, seed=7))
    record = settings.record()
    assert record["clutter"] == 1 and record["seed"] == 7 and record["videos_per_class"] == 24 and "videos" not in record


@pytest.mark.parametrize("change,match", [({"clutter": 9}, "clutter"), ({"size": (63, 64)}, "even"),
                                          ({"codec": "theora"}, "codec"), ({"num_classes": 99}, "num_classes")])
def test_bad_settings_fail_when_made(change, match):
    with pytest.raises(ValueError, match=match):
        BuiltinVideos(**change)
