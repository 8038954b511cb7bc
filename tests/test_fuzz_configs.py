"""Fuzz (hypothesis) the boundaries where people type values: config.json / TrainConfig fields and the CLI's numeric
options. Every generated value is either accepted — and then survives a strict-JSON round trip unchanged (so no
NaN, inf or wrong type was let through) — or refused with a ``ValueError`` that names the field. Any other
exception, or a refusal that does not say which field, fails."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uniseg_hub.cli import main
from uniseg_hub.config import PreprocessingConfig, TaskSpec, UniSegConfig
from uniseg_hub.training import AugmentationConfig, TrainConfig

from .conftest import REF, TINY_MODEL

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(st.text(max_size=4), SCALARS, max_size=3))
CLASSES = [TrainConfig, AugmentationConfig, UniSegConfig, PreprocessingConfig, TaskSpec]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _base(cls) -> dict:
    if cls is TaskSpec:
        return TaskSpec(name="liver", num_classes=3, modalities=["CT"]).to_dict()
    return cls().to_dict()


def _strict_round_trip(cfg) -> None:
    def refuse(c):
        raise AssertionError(f"{type(cfg).__name__} accepted a non-finite number: {c}")

    text = cfg.to_json()
    again = type(cfg).from_dict(json.loads(text, parse_constant=refuse))
    assert again.to_dict() == cfg.to_dict()


def _accepted_or_named(cls, field: str, value) -> None:
    data = _base(cls)
    data[field] = value
    try:
        cfg = cls.from_dict(data)
    except ValueError as e:
        msg = str(e)
        assert field in msg, f"{cls.__name__}.{field}={value!r} refused without naming the field: {msg}"
        assert "\n" not in msg.strip()
        return
    _strict_round_trip(cfg)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@FUZZ
@given(data=st.data())
def test_every_config_field_accepts_or_names_itself(cls, data):
    field = data.draw(st.sampled_from([f.name for f in dataclasses.fields(cls)]), label="field")
    _accepted_or_named(cls, field, data.draw(VALUES, label="value"))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@FUZZ
@given(data=st.data())
def test_every_config_field_with_a_value_of_its_own_type(cls, data):
    """Values of the right type but any size/sign: range checks must name the field too."""
    field = data.draw(st.sampled_from([f.name for f in dataclasses.fields(cls)]), label="field")
    current = _base(cls)[field]
    if isinstance(current, bool):
        value = data.draw(st.booleans())
    elif isinstance(current, int):
        value = data.draw(st.integers(-10**9, 10**9))
    elif isinstance(current, float):
        value = data.draw(st.floats(allow_nan=True, allow_infinity=True))
    elif isinstance(current, list) and current and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in current):
        value = data.draw(st.lists(st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6)), min_size=0, max_size=5))
    else:
        value = data.draw(VALUES)
    _accepted_or_named(cls, field, value)


NUMERIC_OPTIONS = {
    "--step": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4)),
    "--sw-batch-size": st.one_of(st.integers(-5, 5), st.text(max_size=3)),
    "--memory-limit-gb": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4)),
    "--spacing": st.one_of(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=4).map(
        lambda v: ",".join(map(str, v))), st.text(max_size=8)),
}


@pytest.fixture(scope="module")
def predict_calls(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("option", sorted(NUMERIC_OPTIONS))
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cli_numeric_options_accept_or_name_the_option(option, data, monkeypatch, capsys, tmp_path_factory):
    """Accepted values reach the predictor (stopped there: the prediction itself is tested elsewhere); refused ones
    are one line that names the option, exit code 1 — or argparse's usage error (exit 2) for a non-number."""
    from uniseg_hub.inference import UniSegPredictor

    value = str(data.draw(NUMERIC_OPTIONS[option], label="value"))

    class Reached(BaseException):  # not an Exception: the CLI turns those into messages
        pass

    def stop(self, *args, **kwargs):
        raise Reached

    monkeypatch.setattr(UniSegPredictor, "predict_file", stop)
    out = tmp_path_factory.mktemp("o") / "o.nii.gz"
    argv = ["predict", "-i", str(REF / "e2e" / "ct_t0_0000.nii.gz"), "-o", str(out), "--weights", str(TINY_MODEL),
            "--task", "0", "--device", "cpu", f"{option}={value}"]
    try:
        rc = main(argv)
    except Reached:
        _assert_sane(option, value)
        return
    except SystemExit as e:  # argparse: not a number at all
        assert e.code == 2
        assert "invalid" in capsys.readouterr().err
        return
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and err.startswith("uniseg-hub predict: error: "), err
    assert option in err or option.lstrip("-").replace("-", "_") in err, (option, value, err)


def _assert_sane(option: str, value: str) -> None:
    """What an accepted value must be."""
    if option == "--step":
        assert 0 < float(value) <= 1
    elif option == "--sw-batch-size":
        assert int(value) >= 1
    elif option == "--memory-limit-gb":
        assert math.isfinite(float(value)) and float(value) > 0
    else:
        parts = [float(v) for v in value.split(",")]
        assert len(parts) == 3 and all(math.isfinite(v) and 1e-3 <= v <= 100 for v in parts)
