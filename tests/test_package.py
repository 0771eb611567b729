"""The public API is re-exported once, from hf_kd's __init__, and every name there resolves."""

import hf_kd


def test_every_public_name_resolves_to_its_module():
    for name, module in hf_kd._EXPORTS.items():
        obj = getattr(hf_kd, name)
        assert obj.__module__ == f"hf_kd.{module}", name


def test_unknown_names_raise_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'DistilTrainer'"):
        hf_kd.DistilTrainer  # noqa: B018
