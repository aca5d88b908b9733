"""jit readiness in fresh processes: nothing compiles on import, and every way of not being ready
is survived by the engine and explained by ``status().reason``.

Each scenario runs a short script in a subprocess (the warm-up outcome is per process). Scripts
that need compiled kernels load them from the session's cache (``jit_ready``), so none of them
compiles. The one fault that cannot be caused for real, a compiler that fails, is a stand-in
``numba`` package that raises.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.plugins import jit
from xpscerpto.plugins._jit_cache import CacheDirError, check_cache_dir, resolve_cache_dir

# Prints, as JSON: what was imported, the status, the providers, and an engine's AEAD routes.
REPORT = """
import json, os, sys
import xpscerpto
from xpscerpto.plugins import jit

def report(**extra):
    s = jit.status()
    # jit is a built-in plugin; autotune off: this engine must not warm anything up itself.
    eng = xpscerpto.Engine(xpscerpto.EngineConfig(autoload_plugins=False, autotune=False))
    key = os.urandom(32)
    sealed = eng.aead.encrypt("XCHACHA20-POLY1305", key, b"m", b"a")
    assert eng.aead.open("XCHACHA20-POLY1305", key, sealed, b"a") == b"m"
    print(json.dumps({
        "numba": "numba" in sys.modules,
        "kernels": "xpscerpto.plugins._jit_kernels" in sys.modules,
        "state": s.state, "reason": s.reason, "from_cache": s.loaded_from_cache,
        "providers": [p.name for p in jit.make_providers()],
        "engine_providers": sorted(p.name for p in eng.state.providers),
        **extra,
    }))
"""


def run(script: str, env: dict[str, str] | None = None, prelude: str = "") -> dict[str, Any]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XPS_"))}
    full_env.update(env or {})
    code = prelude + REPORT + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          env=full_env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- nothing compiles until warm-up ---------------------------------------------------------------


def test_import_status_providers_and_engine_compile_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "numba-cache"
    out = run("""
        from xpscerpto import InternalError
        try:
            jit.JitXChaCha20Poly1305().cipher(bytes(32)).encrypt(bytes(24), b"", b"")
        except InternalError as exc:
            refused = str(exc)
        report(refused=refused)
    """, env={"NUMBA_CACHE_DIR": str(cache), "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert out["numba"] is False and out["kernels"] is False
    assert out["state"] == "cold" and "warm_up" in out["reason"]
    assert out["providers"] == [] and out["engine_providers"] == ["openssl", "sodium"]
    assert "not warmed up" in out["refused"]
    assert not cache.exists() and not (tmp_path / "xdg").exists()


def test_warm_up_from_the_cache_loads_without_compiling_or_writing(jit_ready: jit.JitStatus, jit_cache: Path) -> None:
    before = snapshot(jit_cache)
    assert before, "the session's warm-up wrote no cache"
    out = run("""
        st = jit.warm_up()
        from xpscerpto.plugins import _jit_kernels as k
        misses = sum(sum(d.stats.cache_misses.values()) for d in k.KERNELS.values())
        report(misses=misses, cache_dir=st.cache_dir)
    """, env={"NUMBA_CACHE_DIR": str(jit_cache)})
    assert out["state"] == "ready" and out["from_cache"] is True and out["misses"] == 0, out
    assert out["reason"].startswith("loaded from the cache in ")
    assert out["providers"] == ["jit", "jit-openssl"]
    assert out["engine_providers"] == ["jit", "jit-openssl", "openssl", "sodium"]
    assert Path(out["cache_dir"]).parent == jit_cache
    assert snapshot(jit_cache) == before


def test_status_goes_cold_warming_ready_and_providers_appear_only_when_ready(jit_ready: jit.JitStatus,
                                                                           jit_cache: Path) -> None:
    out = run("""
        import time
        seen = []
        t = jit.start_warm_up()
        while True:
            st, provs = jit.status(), jit.make_providers()
            seen.append([st.state, len(provs)])
            if st.state in ("ready", "unavailable"):
                break
            time.sleep(0.001)
        t.join()
        report(seen=seen)
    """, env={"NUMBA_CACHE_DIR": str(jit_cache)})
    states = [s for s, _ in out["seen"]]
    assert states[-1] == "ready"
    assert "warming" in states  # importing numba alone takes far longer than one poll
    assert set(states) <= {"cold", "warming", "ready"}
    assert all(n == 0 for s, n in out["seen"] if s != "ready")


def test_concurrent_warm_ups_do_the_work_once(jit_ready: jit.JitStatus, jit_cache: Path) -> None:
    out = run("""
        import threading
        results = []
        threads = [threading.Thread(target=lambda: results.append(jit.warm_up())) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        report(same=all(r is results[0] for r in results), n=len(results))
    """, env={"NUMBA_CACHE_DIR": str(jit_cache)})
    assert out["same"] is True and out["n"] == 4 and out["state"] == "ready"


# -- every way of not being ready -----------------------------------------------------------------

NO_NUMBA = """
import sys

class NoNumba:
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoNumba())
"""


def test_without_numba_the_engine_runs_and_says_why(tmp_path: Path) -> None:
    out = run("""
        st = jit.warm_up()
        report(warm=st.state)
    """, env={"NUMBA_CACHE_DIR": str(tmp_path / "c")}, prelude=NO_NUMBA)
    assert out["warm"] == "unavailable" and out["state"] == "unavailable"
    assert out["reason"] == "numba cannot be imported (ModuleNotFoundError: No module named 'numba')"
    assert out["providers"] == [] and out["engine_providers"] == ["openssl", "sodium"]


def test_masked_warm_up_does_not_even_import_numba(tmp_path: Path) -> None:
    out = run("""
        st = jit.warm_up()
        report(warm=st.state)
    """, env={"XPS_SIMD_ISA_MASK": "-avx512,-jit", "NUMBA_CACHE_DIR": str(tmp_path / "c")})
    assert out["warm"] == "masked" and out["state"] == "masked"
    assert out["reason"] == "masked by XPS_SIMD_ISA_MASK (-jit)"
    assert out["numba"] is False and out["providers"] == []
    assert not (tmp_path / "c").exists()


def test_numba_disable_jit_is_refused_not_run_as_python(tmp_path: Path) -> None:
    out = run("report(warm=jit.warm_up().state)",
              env={"NUMBA_DISABLE_JIT": "1", "NUMBA_CACHE_DIR": str(tmp_path / "c")})
    assert out["state"] == "unavailable" and "NUMBA_DISABLE_JIT" in out["reason"]
    assert out["kernels"] is False and out["providers"] == []


def test_a_compiler_failure_is_reported(tmp_path: Path) -> None:
    """A stand-in numba whose compiler raises: the one fault here we cannot cause for real."""
    fake = tmp_path / "fake" / "numba"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent("""
        __version__ = "0.0-broken"

        class config:
            DISABLE_JIT = False
            CACHE_DIR = ""
            CPU_FEATURES = None

        class _Type:
            def __call__(self, *args, **kwargs):
                return self

        class types:
            uint8 = int64 = Bytes = ByteArray = _Type()

        def njit(*args, **kwargs):
            if args and isinstance(args[0], type(njit)):  # @njit on a helper: compiled lazily
                return args[0]

            def compile_now(fn):  # an explicit signature compiles at decoration: it fails
                raise RuntimeError("LLVM ERROR: out of registers (stand-in)")
            return compile_now if args else (lambda fn: fn)
    """))
    out = run("report(warm=jit.warm_up().state)",
              env={"PYTHONPATH": str(fake.parent), "NUMBA_CACHE_DIR": str(tmp_path / "c")})
    assert out["state"] == "unavailable"
    assert out["reason"] == ("compiling the kernels failed (RuntimeError: LLVM ERROR: out of registers "
                             "(stand-in))")
    assert out["providers"] == [] and out["engine_providers"] == ["openssl", "sodium"]


@pytest.mark.parametrize("damage", ["index truncated", "index emptied", "data garbage"])
def test_a_damaged_cache_is_refused_with_its_path_not_silently_rebuilt(jit_ready: jit.JitStatus, jit_cache: Path,
                                                                        tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(jit_cache, cache)
    (sub,) = [p for p in cache.iterdir() if p.is_dir()]
    index = sorted(sub.glob("*xchacha20poly1305_seal*.nbi"))[0]
    data = sorted(sub.glob("*xchacha20poly1305_seal*.nbc"))[0]
    if damage == "index truncated":
        index.write_bytes(index.read_bytes()[:40])
    elif damage == "index emptied":
        index.write_bytes(b"")
    else:
        data.write_bytes(b"\x80\x04garbage")
    before = snapshot(cache)
    out = run("report(warm=jit.warm_up().state)", env={"NUMBA_CACHE_DIR": str(cache)})
    assert out["state"] == "unavailable" and out["providers"] == []
    assert out["reason"].startswith(f"the kernel cache in {cache} is unreadable ("), out["reason"]
    assert out["reason"].endswith("remove that directory to recompile")
    assert snapshot(cache) == before, "the damaged cache was changed"


@pytest.mark.parametrize("damage", ["index a fifo", "data a fifo", "data a symlink to /dev/zero", "data huge",
                                    "a subdirectory others can write"])
def test_a_cache_entry_numba_would_hang_on_or_read_forever_is_refused_before_import(
        jit_ready: jit.JitStatus, jit_cache: Path, tmp_path: Path, damage: str) -> None:
    # Found by a review: numba opened a FIFO in place of its index and blocked the warm-up (and
    # `xps tune`) forever; a symlink to /dev/zero was read until memory ran out.
    cache = tmp_path / "cache"
    shutil.copytree(jit_cache, cache)
    (sub,) = [p for p in cache.iterdir() if p.is_dir()]
    index = sorted(sub.glob("*xchacha20poly1305_seal*.nbi"))[0]
    data = sorted(sub.glob("*xchacha20poly1305_seal*.nbc"))[0]
    victim = index if damage == "index a fifo" else data
    if "fifo" in damage:
        victim.unlink()
        os.mkfifo(victim)
    elif "symlink" in damage:
        victim.unlink()
        victim.symlink_to("/dev/zero")
    elif damage == "data huge":
        with victim.open("r+b") as f:
            f.truncate(65 << 20)
    else:
        sub.chmod(0o777)
    out = run("report(warm=jit.warm_up().state)", env={"NUMBA_CACHE_DIR": str(cache)})
    assert out["state"] == "unavailable" and out["providers"] == [] and out["kernels"] is False
    assert out["reason"].startswith("cache: cache "), out["reason"]
    assert str(sub) in out["reason"]


def test_a_refused_cache_directory_does_not_end_jit_for_the_process(jit_ready: jit.JitStatus, jit_cache: Path,
                                                                    tmp_path: Path) -> None:
    # Found by a review: one refused cache_dir (the caller's to fix) made jit unavailable for good.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)
    out = run(f"""
first = jit.warm_up({str(shared)!r}).state
report(first=first, second=jit.warm_up({str(jit_cache)!r}).state)
""")
    assert (out["first"], out["second"], out["state"]) == ("unavailable", "ready", "ready")


def test_a_cache_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)
    out = run("report(warm=jit.warm_up().state)", env={"NUMBA_CACHE_DIR": str(shared)})
    assert out["state"] == "unavailable"
    assert out["reason"] == f"cache: cache directory {shared} is writable by group or others (mode 777)"
    assert out["kernels"] is False and list(shared.iterdir()) == []


# -- the cache directory checks -------------------------------------------------------------------


def test_cache_dir_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_cache_dir() == tmp_path / "numba"
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert resolve_cache_dir() == tmp_path / "xdg" / "xpscerpto" / "numba"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_cache_dir() == Path.home() / ".cache" / "xpscerpto" / "numba"


def test_cache_dir_is_created_private(tmp_path: Path) -> None:
    path = check_cache_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


@pytest.mark.parametrize("problem", ["group writable", "world writable", "a file", "parent world writable",
                                     "someone else's"])
def test_cache_dir_refusals(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "cache"
    expected = "writable by group or others"
    if problem == "group writable":
        path.mkdir()
        path.chmod(0o770)
    elif problem == "world writable":
        path.mkdir()
        path.chmod(0o703)
    elif problem == "a file":
        path.write_bytes(b"")
        expected = "cannot be created" if sys.platform != "linux" else "cannot be created (File exists)"
    elif problem == "parent world writable":
        parent = tmp_path / "open"
        parent.mkdir()
        parent.chmod(0o777)
        path = parent / "cache"
        expected = f"directory {parent} is writable by group or others (mode 777)"
    else:
        if os.geteuid() == 0:
            path.mkdir()
            os.chown(path, 12345, 12345)
        else:  # not root: a directory of root's stands in for someone else's
            path = Path("/usr")
        expected = "belongs to uid"
    with pytest.raises(CacheDirError) as info:
        check_cache_dir(path)
    assert expected in str(info.value), str(info.value)


def test_status_is_safe_to_read_while_another_thread_warms(jit_ready: jit.JitStatus) -> None:
    """Readers never block on the warm-up lock and always see a whole snapshot."""
    seen: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            st = jit.status(mask="")
            seen.append(st.state)
            assert bool(jit.make_providers(mask="")) == (st.state == "ready")

    t = threading.Thread(target=read)
    t.start()
    for _ in range(50):
        jit.warm_up(mask="")
    stop.set()
    t.join()
    assert set(seen) == {"ready"}
