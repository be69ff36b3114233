"""One data config: ``data.*`` (DataConfig) becomes the loader's LoaderConfig through one worker rule."""
from __future__ import annotations

import pytest

from vito_fast.data import DataConfig, LoaderConfig, decode_workers, usable_cores
from vito_fast.train.config import Config, from_dict, load_config, to_dict


def test_the_pretraining_config_holds_the_data_config():
    assert isinstance(Config().data, DataConfig)
    assert DataConfig().image_size == LoaderConfig().image_size
    assert DataConfig().sample_timeout == LoaderConfig().sample_timeout


def test_automatic_is_none_and_the_old_spellings_still_read():
    assert DataConfig().num_threads is None and DataConfig().decode_workers is None
    values = to_dict(Config())
    values["data"].update(num_threads=0, decode_workers=-1)  # what configs and checkpoints wrote before
    data = from_dict(values).data
    assert data.num_threads is None and data.decode_workers is None
    assert load_config(overrides=["data.decode_workers=0", "data.num_threads=3"]).data.decode_workers == 0


@pytest.mark.parametrize("override,match", [("data.decode_workers=-2", "data.decode_workers"),
                                            ("data.num_threads=-1", "data.num_threads"),
                                            ("data.source=files", "data.source")])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(overrides=[override])


def test_one_worker_rule(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert decode_workers(None) == max(1, usable_cores() - 1) and decode_workers(3) == 3 and decode_workers(0) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert decode_workers(None) == max(1, usable_cores() // 2 - 1)
    assert LoaderConfig().workers() == decode_workers(None)
    loader = DataConfig(decode_workers=None, num_threads=None).loader_config(dtype="float32")
    assert loader.decode_workers == decode_workers(None) and loader.num_threads is None
    assert DataConfig(decode_workers=0).loader_config(dtype="float32").decode_workers == 0
