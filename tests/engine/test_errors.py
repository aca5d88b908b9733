"""The error hierarchy: one code per class, the code leads the message, ValueError where promised."""

from __future__ import annotations

import pytest
import xpscerpto as xps
from xpscerpto import errors
from xpscerpto.errors import (
    AuthError,
    ErrorCode,
    InternalError,
    KeyError_,
    NonceError,
    PolicyError,
    ProviderError,
    UpdateError,
    XpsError,
)

# class -> the code every instance carries by default
CODES: dict[str, tuple[type[XpsError], str]] = {
    "AuthError": (AuthError, "XPS_ERR_AUTH"),
    "KeyError_": (KeyError_, "XPS_ERR_KEY"),
    "NonceError": (NonceError, "XPS_ERR_NONCE"),
    "PolicyError": (PolicyError, "XPS_ERR_POLICY"),
    "UpdateError": (UpdateError, "XPS_ERR_UPDATE"),
    "InternalError": (InternalError, "XPS_ERR_INTERNAL"),
    "ProviderError": (ProviderError, "XPS_ERR_INTERNAL"),
}


def test_error_code_set_is_exactly_the_six_codes() -> None:
    assert {c.value for c in ErrorCode} == {
        "XPS_ERR_AUTH", "XPS_ERR_KEY", "XPS_ERR_NONCE", "XPS_ERR_POLICY", "XPS_ERR_UPDATE",
        "XPS_ERR_INTERNAL",
    }


@pytest.mark.parametrize(("cls", "code"), list(CODES.values()), ids=list(CODES))
def test_subclass_carries_its_code(cls: type[XpsError], code: str) -> None:
    e = cls("field: something is wrong")
    assert cls.code == code
    assert e.code == code
    assert isinstance(e.code, ErrorCode)
    assert isinstance(e, XpsError)


@pytest.mark.parametrize(("cls", "code"), list(CODES.values()), ids=list(CODES))
def test_str_starts_with_code_then_message(cls: type[XpsError], code: str) -> None:
    e = cls("key: expected 32 bytes, got 16")
    assert str(e).startswith(code)
    assert str(e) == f"{code}: key: expected 32 bytes, got 16"
    assert e.args == ("key: expected 32 bytes, got 16",)


@pytest.mark.parametrize(("cls", "code"), list(CODES.values()), ids=list(CODES))
def test_raised_error_is_caught_as_xps_error(cls: type[XpsError], code: str) -> None:
    with pytest.raises(XpsError) as ei:
        raise cls("x: bad")
    assert type(ei.value) is cls
    assert ei.value.code == code


def test_base_error_defaults_to_internal() -> None:
    e = XpsError("something")
    assert e.code == ErrorCode.INTERNAL
    assert str(e) == "XPS_ERR_INTERNAL: something"


def test_code_can_be_overridden_per_instance_without_touching_the_class() -> None:
    e = PolicyError("algo: nope", code=ErrorCode.KEY)
    assert e.code == ErrorCode.KEY
    assert str(e).startswith("XPS_ERR_KEY: ")
    assert PolicyError.code == ErrorCode.POLICY
    assert PolicyError("x").code == ErrorCode.POLICY


VALUE_ERRORS = {"KeyError_": KeyError_, "NonceError": NonceError}
NOT_VALUE_ERRORS = {
    "AuthError": AuthError,
    "PolicyError": PolicyError,
    "UpdateError": UpdateError,
    "InternalError": InternalError,
    "ProviderError": ProviderError,
}


@pytest.mark.parametrize("cls", list(VALUE_ERRORS.values()), ids=list(VALUE_ERRORS))
def test_key_and_nonce_errors_are_value_errors(cls: type[XpsError]) -> None:
    assert issubclass(cls, ValueError)
    with pytest.raises(ValueError) as ei:
        raise cls("nonce: expected 12 bytes, got 3")
    assert type(ei.value) is cls


@pytest.mark.parametrize("cls", list(NOT_VALUE_ERRORS.values()), ids=list(NOT_VALUE_ERRORS))
def test_other_errors_are_not_value_errors(cls: type[XpsError]) -> None:
    # An authentication failure must not be swallowed by generic `except ValueError` input handling.
    assert not issubclass(cls, ValueError)


def test_provider_error_is_an_internal_error() -> None:
    assert issubclass(ProviderError, InternalError)
    e = ProviderError("aead.aes256gcm: provider 'x' failed")
    assert isinstance(e, InternalError)
    assert e.code == ErrorCode.INTERNAL
    with pytest.raises(InternalError):
        raise e


def test_provider_error_keeps_a_chained_cause() -> None:
    cause = RuntimeError("boom")
    with pytest.raises(ProviderError) as ei:
        try:
            raise cause
        except RuntimeError as exc:
            raise ProviderError("op: provider 'p' failed") from exc
    assert ei.value.__cause__ is cause


def test_error_code_is_a_str_enum_equal_to_its_value() -> None:
    assert ErrorCode.AUTH == "XPS_ERR_AUTH"
    assert f"{ErrorCode.NONCE}" == "XPS_ERR_NONCE"


def test_public_package_reexports_the_same_classes() -> None:
    for name in errors.__all__:
        assert getattr(xps, name) is getattr(errors, name)
