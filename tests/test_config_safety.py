"""DistillationConfig keeps secrets out of logs and files, and refuses settings that would teach nothing."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle

import pytest
import torch

from hf_kd import DistillationConfig
from hf_kd.config import TEMPERATURE_RANGE, parse_layer_map

TOKEN = "hf_secret_token_for_tests"


def config(tmp_path, **kw) -> DistillationConfig:
    return DistillationConfig(output_dir=str(tmp_path), report_to=[], hub_token=TOKEN, **kw)


# ---- secrets -----------------------------------------------------------------------------------------------


def test_repr_and_str_redact_the_hub_token(tmp_path):
    args = config(tmp_path)
    for text in (repr(args), str(args), f"{args!r}", f"{args}"):
        assert TOKEN not in text
        assert "hub_token=<HUB_TOKEN>" in text
    assert "temperature=2.0" in repr(args)  # the rest is still shown


def test_every_token_field_is_redacted(tmp_path):
    token_fields = [f for f in vars(config(tmp_path)) if f.endswith("_token")]
    assert "hub_token" in token_fields
    args = config(tmp_path)
    for name in token_fields:
        setattr(args, name, f"{TOKEN}-{name}")
    assert TOKEN not in repr(args) and TOKEN not in str(args)


def test_logging_the_config_with_percent_r_does_not_leak(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        logging.getLogger("hf_kd.tests").info("config: %r / %s", config(tmp_path), config(tmp_path))
    assert TOKEN not in caplog.text and "<HUB_TOKEN>" in caplog.text


def test_deepcopy_and_copy_keep_the_token_in_memory(tmp_path):
    args = config(tmp_path, temperature=3.0)
    copied = copy.deepcopy(args)
    assert copied.hub_token == TOKEN and copied.temperature == 3.0
    assert copied is not args and copied.layer_map == args.layer_map
    assert copy.copy(args).hub_token == TOKEN
    assert args.hub_token == TOKEN  # the original is untouched


def test_the_token_never_reaches_disk(tmp_path):
    args = config(tmp_path)
    assert TOKEN not in args.to_json_string()
    assert TOKEN not in json.dumps(args.to_dict())
    assert TOKEN not in json.dumps(args.to_sanitized_dict(), default=str)
    # Trainer writes training_args.bin with torch.save (a pickle): the token is dropped there.
    path = os.path.join(tmp_path, "training_args.bin")
    torch.save(args, path)
    with open(path, "rb") as f:
        assert TOKEN.encode() not in f.read()
    assert pickle.loads(pickle.dumps(args)).hub_token is None
    assert torch.load(path, weights_only=False).hub_token is None


# ---- temperature ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-6, 0.01, 0.049])
def test_a_temperature_below_the_range_is_refused_with_the_reason(tmp_path, temperature):
    with pytest.raises(
        ValueError, match=r"temperature=.* is below 0.05: .*gradient is exactly 0.*\[0.05, 100\]"
    ):
        config(tmp_path, temperature=temperature)


@pytest.mark.parametrize("temperature", [100.5, 1e3, 1e6])
def test_a_temperature_above_the_range_is_refused_with_the_reason(tmp_path, temperature):
    with pytest.raises(
        ValueError, match=r"temperature=.* is above 100: .*high-temperature limit.*\[0.05, 100\]"
    ):
        config(tmp_path, temperature=temperature)


def test_the_range_ends_are_accepted_and_documented(tmp_path):
    assert TEMPERATURE_RANGE == (0.05, 100.0)
    for t in TEMPERATURE_RANGE:
        assert config(tmp_path, temperature=t).temperature == t
    assert "[0.05, 100]" in DistillationConfig.__doc__


def test_the_final_temperature_of_a_schedule_is_checked_too(tmp_path):
    with pytest.raises(ValueError, match="temperature_final=1000 is above 100"):
        config(tmp_path, temperature_schedule="linear", temperature_final=1e3)
    with pytest.raises(ValueError, match="temperature_final=1e-06 is below 0.05"):
        config(tmp_path, temperature_schedule="cosine", temperature_final=1e-6)
    # A constant schedule ignores temperature_final, as before.
    assert config(tmp_path, temperature_final=1e3).temperature == 2.0


def test_a_temperature_below_the_range_gives_a_zero_gradient():
    # Why the lower end exists: at T=1e-6 a student whose argmax agrees with the teacher's gets a KD gradient of
    # exactly 0, however differently it ranks the other classes; at T=0.05 it learns that ranking.
    from hf_kd.losses import soft_target_loss

    student = torch.tensor([[0.3, 0.0, -0.2]], requires_grad=True)
    teacher = torch.tensor([[0.35, -0.5, 0.0]])  # same argmax, other classes ranked the other way
    soft_target_loss(student, teacher, 1e-6).backward()
    assert torch.count_nonzero(student.grad) == 0
    student.grad = None
    soft_target_loss(student, teacher, TEMPERATURE_RANGE[0]).backward()
    assert torch.count_nonzero(student.grad) == 3


# ---- layer map ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1:2,1:1", "1:2, 2:3, 1:1", '{"1": 2, "1": 1}', {1: 2, "1": 1}])
def test_a_student_layer_named_twice_is_an_error(value):
    with pytest.raises(
        ValueError, match=r"names student layer 1 twice \(-> 2 and -> 1\).*one entry per student"
    ):
        parse_layer_map(value)


def test_duplicate_layers_are_refused_by_the_config(tmp_path):
    with pytest.raises(ValueError, match="names student layer 1 twice"):
        config(tmp_path, hidden_weight=1.0, layer_map="1:2,1:1")


def test_distinct_layers_still_parse():
    assert parse_layer_map("1:2,2:2") == {1: 2, 2: 2}  # two student layers may learn from one teacher layer
    assert parse_layer_map('{"2": 6, "1": 3}') == {2: 6, 1: 3}
    assert parse_layer_map({"0": 0, 1: 3}) == {0: 0, 1: 3}
