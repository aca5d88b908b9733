"""The KAT loaders (review finding F7): a malformed file is a PolicyError naming the file and
field, a hex field that is not hex is an error (never kept as text), and files are size-capped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from xpscerpto.errors import PolicyError
from xpscerpto.kat import parse_vectors, run_selftest, selftest_vectors
from xpscerpto.kat import selftest as selftest_module
from xpscerpto.kat.wycheproof import load_wycheproof

DEEP = "[" * 100_000 + "]" * 100_000

VECTOR_FILES: dict[str, tuple[bytes, str]] = {
    "not json": (b"{", "not JSON"),
    "not utf-8": (b'{"vectors": ["\xff"]}', "not JSON"),
    "nested too deeply": (('{"vectors": ' + DEEP + "}").encode(), "nested too deeply"),
    "a top-level list": (b"[]", "expected an object with a 'vectors' list"),
    "no vectors": (b"{}", "expected an object with a 'vectors' list"),
    "vectors not a list": (b'{"vectors": 5}', "expected an object with a 'vectors' list"),
    "a vector not an object": (b'{"vectors": [{}, 1]}', "vectors[1]: expected an object"),
    "bad hex": (b'{"vectors": [{"key": "zz"}]}', "vectors[0].key: expected hex digits"),
    "odd hex": (b'{"vectors": [{"result": "valid", "tag": "abc"}]}', "vectors[0].tag: expected hex digits"),
    "bad hex under an odd field name": (b'{"vectors": [{"x\\u001b[2J": "zz"}]}', "vectors[0].a field: expected hex"),
}


@pytest.mark.parametrize("case", sorted(VECTOR_FILES))
def test_a_malformed_vector_file_is_a_policy_error_naming_where(case: str) -> None:
    raw, expected = VECTOR_FILES[case]
    with pytest.raises(PolicyError, match=r"capsule kat/own\.json: ") as ei:
        parse_vectors(raw, "capsule kat/own.json")
    assert expected in str(ei.value) and "zz" not in str(ei.value) and "\x1b" not in str(ei.value)


def test_a_vector_file_past_the_cap_is_refused_before_parsing() -> None:
    raw = b'{"vectors": [], "pad": "' + b"0" * selftest_module.MAX_KAT_FILE + b'"}'
    with pytest.raises(PolicyError, match=f"KAT file: larger than {selftest_module.MAX_KAT_FILE} bytes"):
        parse_vectors(raw)


def test_the_shipped_self_test_vectors_still_load_as_bytes() -> None:
    vectors = selftest_vectors("aead.aes256gcm")
    assert vectors and all(type(v["key"]) is bytes and type(v["result"]) is str for v in vectors)


@pytest.mark.parametrize("kind", ["bad-hex", "fifo", "dev-zero", "missing"])
def test_a_providers_bad_kat_file_fails_its_self_test_closed(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.json"
    if kind == "bad-hex":
        path.write_text(json.dumps({"vectors": [{"result": "invalid", "key": "zz", "tag": "0g"}]}))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    result = run_selftest("p", "aead.aes256gcm", "aead", object(), extra_files=[path])
    assert not result.passed and result.failure is not None
    assert result.failure.startswith(f"PolicyError: XPS_ERR_POLICY: KAT file {str(path)!r}: ")


WYCHEPROOF_FILES: dict[str, tuple[str, str]] = {
    "not json": ("{", "not JSON"),
    "nested too deeply": (DEEP, "nested too deeply"),
    "no testGroups": ("{}", "expected an object with a 'testGroups' list"),
    "group without tests": ('{"testGroups": [{}]}', "testGroups[0]: expected an object with a 'tests' list"),
    "test not an object": ('{"testGroups": [{"tests": [5]}]}', "testGroups[0].tests[0]: expected an object"),
    "tcId not an int": ('{"testGroups": [{"tests": [{"tcId": "x", "result": "valid"}]}]}', "tests[0].tcId: expected"),
    "result unknown": ('{"testGroups": [{"tests": [{"tcId": 1, "result": "zz"}]}]}', "tests[0].result: expected"),
    "flags not a list": ('{"testGroups": [{"tests": [{"tcId": 1, "result": "valid", "flags": "zz"}]}]}',
                         "tests[0].flags: expected a list of str"),
    # Kept as text before: an 'invalid' vector then failed for a reason other than its own.
    "bad hex in a test": ('{"testGroups": [{"tests": [{"tcId": 1, "result": "invalid", "ct": "0g"}]}]}',
                          "testGroups[0].tests[0].ct: expected hex digits"),
    "odd hex in a group": ('{"testGroups": [{"iv": "abc", "tests": []}]}', "testGroups[0].iv: expected hex digits"),
    "nested public key not hex": ('{"testGroups": [{"publicKey": {"pk": "zz"}, "tests": []}]}',
                                  "testGroups[0].publicKey.pk: expected hex digits"),
}


@pytest.mark.parametrize("case", sorted(WYCHEPROOF_FILES))
def test_a_malformed_wycheproof_file_is_a_policy_error_naming_where(tmp_path: Path, case: str) -> None:
    text, expected = WYCHEPROOF_FILES[case]
    path = tmp_path / "x_test.json"
    path.write_text(text)
    with pytest.raises(PolicyError, match=f"Wycheproof file {str(path)!r}: ") as ei:
        load_wycheproof(path)
    assert expected in str(ei.value) and "zz" not in str(ei.value)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_wycheproof_path_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path,
                                                                                  kind: str) -> None:
    path = tmp_path / "x_test.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(PolicyError, match="not a regular file"):
        load_wycheproof(path)
