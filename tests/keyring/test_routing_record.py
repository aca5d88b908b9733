"""The routing policy (``forbid``, ``allow``, ``require_constant_time``) is part of the policy a
home records: a later file may add to it but not drop from it, ``xps policy apply`` loosens it
with approvals, and an emergency change cannot go below it. Real ``xps`` processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import xpscerpto as xps_api
from xpscerpto.capsules.service import WatchService
from xpscerpto.config import ROUTING_KEYS, XpsConfig
from xpscerpto.errors import PolicyError
from xpscerpto.settings import EngineConfig, Policy

from .test_home_policy import events, keygen, ok, refused, xps
from .test_roster import DATA

FORBID_AES128 = "crypto:\n  policy:\n    forbid: [aes128]\n"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home initialised with ``forbid: [aes128]``."""
    cfg = tmp_path / "forbid.yaml"
    cfg.write_text(FORBID_AES128)
    ok(xps(tmp_path / "home", "init", config=cfg))
    return tmp_path / "home"


def config(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_a_home_records_its_routing_policy(home: Path) -> None:
    policy = json.loads((home / "home.json").read_text())["policy"]
    assert {k: policy[k] for k in ROUTING_KEYS} == {"engine.policy.forbid": ["aes128"], "engine.policy.allow": None,
                                                    "engine.policy.require_constant_time": True}


def test_without_a_file_the_recorded_forbid_is_in_force(home: Path) -> None:
    # The defaults forbid nothing; before, leaving out --config routed AES-128-GCM again.
    refused(xps(home, "key", "create", "a", "--algo", "AES-128-GCM"), "forbidden by policy", "aes128")
    assert json.loads(ok(xps(home, "config", "show")))["crypto"]["policy"]["forbid"] == ["aes128"]


@pytest.mark.parametrize("text", ["crypto:\n  policy:\n    forbid: []\n", "{}\n",
                                  "crypto:\n  policy:\n    forbid: ['aead.aes128*']\n"])
def test_a_file_that_drops_a_recorded_forbid_is_refused(home: Path, tmp_path: Path, text: str) -> None:
    lax = config(tmp_path, "lax.yaml", text)
    for args in (("key", "encrypt", "a"), ("config", "show")):
        refused(xps(home, *args, stdin=b"x", config=lax), "crypto.policy.forbid", "drops 'aes128'",
                "xps policy apply")


def test_a_file_may_forbid_more_than_the_record(home: Path, tmp_path: Path) -> None:
    strict = config(tmp_path, "strict.yaml", "crypto:\n  policy:\n    forbid: [aes128, aead.aes256gcmsiv]\n")
    ok(xps(home, "key", "create", "siv", "--algo", "AES-256-GCM-SIV"))
    ok(xps(home, "key", "encrypt", "siv", stdin=b"x"))
    refused(xps(home, "key", "encrypt", "siv", stdin=b"x", config=strict), "forbidden by policy")
    ok(xps(home, "key", "create", "gcm", "--algo", "AES-256-GCM", config=strict))
    ok(xps(home, "key", "encrypt", "gcm", stdin=b"x", config=strict))


@pytest.mark.parametrize(("text", "says"), [
    ("crypto:\n  policy:\n    forbid: [aes128]\n    allow: ['aead.*']\n    require_constant_time: false\n",
     "require_constant_time"),
    ("crypto:\n  policy:\n    forbid: [aes128]\n    allow: ['*']\n", None),
])
def test_allow_and_constant_time_are_bound_too(tmp_path: Path, text: str, says: str | None) -> None:
    home = tmp_path / "home"
    ok(xps(home, "init", config=config(tmp_path, "init.yaml",
                                           "crypto:\n  policy:\n    forbid: [aes128]\n    allow: ['aead.*']\n")))
    out = xps(home, "config", "show", config=config(tmp_path, "later.yaml", text))
    refused(out, says or "crypto.policy.allow", "routing policy this home recorded")
    narrower = config(tmp_path, "narrow.yaml", "crypto:\n  policy:\n    forbid: [aes128]\n    allow: []\n")
    ok(xps(home, "config", "show", config=narrower))


def test_policy_apply_loosens_it_only_with_the_approvals(tmp_path: Path) -> None:
    home = tmp_path / "home"
    strict = config(tmp_path, "strict.yaml", "crypto:\n  approvals:\n    destroy: 1\n  policy:\n    forbid: [aes128]\n")
    lax = config(tmp_path, "lax.yaml", "crypto:\n  approvals:\n    destroy: 1\n")
    ok(xps(home, "init", "--operator", str(keygen(tmp_path, "op1")), config=strict))
    refused(xps(home, "policy", "apply", str(lax), "--reason", "r"), "approval")
    assert json.loads((home / "home.json").read_text())["policy"]["engine.policy.forbid"] == ["aes128"]
    ok(xps(home, "policy", "request", str(lax), "--reason", "r", "--out", str(tmp_path / "req.json")))
    ok(xps(home, "key", "approve", str(tmp_path / "req.json"), "--key", str(tmp_path / "op1.key")))
    ok(xps(home, "policy", "apply", str(lax), "--reason", "r", "--approvals", str(tmp_path / "req.json")))
    assert json.loads((home / "home.json").read_text())["policy"]["engine.policy.forbid"] == []
    change = [e for e in events(home) if e["event"] == "POLICY_CHANGE"][-1]
    assert {"key": "engine.policy.forbid", "old": ["aes128"], "new": [], "loosens": True} in change["changes"]
    ok(xps(home, "key", "create", "a", "--algo", "AES-128-GCM"))
    ok(xps(home, "key", "encrypt", "a", stdin=b"x", config=lax))


def test_policy_apply_that_only_forbids_more_needs_no_approvals(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "init", "--operator", str(keygen(tmp_path, "op1")),
           config=config(tmp_path, "a.yaml", "crypto:\n  approvals:\n    destroy: 1\n")))
    more = config(tmp_path, "b.yaml", "crypto:\n  approvals:\n    destroy: 1\n  policy:\n    forbid: [aes128]\n")
    ok(xps(home, "key", "create", "a", "--algo", "AES-128-GCM"))
    ok(xps(home, "policy", "apply", str(more), "--reason", "incident"))
    refused(xps(home, "key", "encrypt", "a", stdin=b"x"), "forbidden by policy")


def test_the_seal_covers_the_routing_policy(home: Path) -> None:
    record = json.loads((home / "home.json").read_text())
    record["policy"]["engine.policy.forbid"] = []
    (home / "home.json").write_text(json.dumps(record))
    refused(xps(home, "key", "list"), "differs from the one this keyring sealed")


def test_a_home_from_before_binds_nothing_until_a_policy_apply_records_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(DATA / "v2-home", home)
    home.chmod(0o700)
    for name in ("kek.key", "audit.key", "keyring.db", "audit.log", "home.json", "state.json"):
        (home / name).chmod(0o600)
    (home / "capsules").mkdir(mode=0o700)
    assert "engine.policy.forbid" not in json.loads((home / "home.json").read_text())["policy"]
    forbid = config(tmp_path, "f.yaml", FORBID_AES128)
    ok(xps(home, "key", "list", config=config(tmp_path, "lax.yaml", "{}\n")))
    ok(xps(home, "policy", "apply", str(forbid), "--reason", "record the routing policy"))
    refused(xps(home, "key", "list", config=config(tmp_path, "lax.yaml", "{}\n")), "drops 'aes128'")
    ok(xps(home, "key", "list"))


# -- the watch service: an engine built in code, and emergency changes ---------------------------


@pytest.fixture
def root(short_root: Path) -> Path:
    return short_root


def test_an_engine_looser_than_the_record_is_refused_by_the_watch_service(root: Path) -> None:
    cfg = XpsConfig(engine=EngineConfig(policy=Policy(forbid=("aes128",))))
    WatchService(xps_api.Engine(cfg.engine), root / "inbox", root / "home", polling=True, config=cfg).updater.close()
    with pytest.raises(PolicyError, match="drops 'aes128'"):
        WatchService(xps_api.Engine(), root / "inbox", root / "home", polling=True)
    stricter = EngineConfig(policy=Policy(forbid=("aes128", "chacha20")))
    WatchService(xps_api.Engine(stricter), root / "inbox", root / "home", polling=True).updater.close()


def test_an_emergency_change_may_forbid_more_but_not_less(root: Path) -> None:
    cfg = XpsConfig(engine=EngineConfig(policy=Policy(forbid=("aes128",))))
    svc = WatchService(xps_api.Engine(cfg.engine), root / "inbox", root / "home", polling=True, config=cfg).start()
    try:
        svc.emergency_change("crypto.policy.forbid", ["aes128", "chacha20"], operator="o", reason="incident")
        before = (root / "home" / "overrides.json").read_bytes()
        with pytest.raises(PolicyError, match="drops 'aes128'"):
            svc.emergency_change("crypto.policy.forbid", [], operator="o", reason="undo too much")
        assert (root / "home" / "overrides.json").read_bytes() == before
        assert "aead.aes128gcm" not in svc.updater.engine.table.routes
        assert svc.config.engine.policy.forbid == ("aes128", "chacha20")
    finally:
        svc.stop()
        svc.updater.close()


def test_a_stored_override_below_the_record_is_raised_to_it_at_start(root: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Review finding (session 7, F1): an incident override stored before a stricter `xps policy
    # apply` refused every later start, and no supported command could undo it (`xps config
    # emergency` needs a running engine). The floor now wins where the override is looser.
    cfg = XpsConfig(engine=EngineConfig(policy=Policy(forbid=("aes128", "chacha20"))))
    home = root / "home"
    WatchService(xps_api.Engine(cfg.engine), root / "inbox", home, polling=True, config=cfg).updater.close()
    (home / "overrides.json").write_text(json.dumps({"engine.policy.forbid": ["aes128", "aes256"]}))
    svc = WatchService(xps_api.Engine(cfg.engine), root / "inbox", home, polling=True, config=cfg).start()
    try:
        assert svc.config.engine.policy.forbid == ("aes128", "chacha20", "aes256")
        routed = set(svc.updater.engine.table.routes)
        assert not routed & {"aead.aes128gcm", "aead.chacha20poly1305", "aead.aes256gcm"}, routed
        assert "below the routing policy this home records (engine.policy.forbid)" in capsys.readouterr().err
    finally:
        svc.stop()
        svc.updater.close()
    shown = json.loads(ok(xps(home, "config", "show")))["crypto"]["policy"]["forbid"]
    assert shown == ["aes128", "chacha20", "aes256"]  # what `xps watch` starts with


@pytest.mark.parametrize(("recorded", "given", "raised"), [
    ({"engine.policy.forbid": ["aes128", "des"]}, {"forbid": ("des", "chacha20")},
     {"forbid": ("aes128", "des", "chacha20")}),
    ({"engine.policy.allow": ["aead.*", "sig.*"]}, {"allow": ("aead.*", "kex.*")}, {"allow": ("aead.*",)}),
    ({"engine.policy.allow": ["aead.*"]}, {"allow": None}, {"allow": ("aead.*",)}),
    ({"engine.policy.require_constant_time": True}, {"require_constant_time": False},
     {"require_constant_time": True}),
])
def test_what_raising_to_the_floor_keeps(recorded: dict[str, object], given: dict[str, object],
                                         raised: dict[str, object]) -> None:
    kw: dict[str, object] = {"forbid": ("sha1",)} if "forbid" not in given else {}
    before = XpsConfig(engine=EngineConfig(policy=Policy(**{**kw, **given})))  # type: ignore[arg-type]
    after, keys = before.raised_to_recorded_routing(recorded)
    assert keys == tuple(recorded)
    for name, value in raised.items():
        assert getattr(after.engine.policy, name) == value
    assert after.raised_to_recorded_routing(recorded) == (after, ())


@pytest.mark.parametrize(("key", "old", "new", "tighter"), [
    ("policy.forbid", ["aes128"], ["aes128", "des"], True),
    ("policy.forbid", ["aes128"], [], False),
    ("policy.forbid", None, [], True),
    ("policy.allow", None, ["aead.*"], True),
    ("policy.allow", ["aead.*"], None, False),
    ("policy.allow", ["aead.*", "sign.*"], ["aead.*"], True),
    ("policy.allow", ["aead.*"], ["aead.*", "sign.*"], False),
    ("policy.require_constant_time", True, False, False),
    ("policy.require_constant_time", False, True, True),
    ("policy.require_constant_time", None, True, True),
])
def test_what_counts_as_tighter(key: str, old: object, new: object, tighter: bool) -> None:
    assert EngineConfig.tightens(key, old, new) is tighter
