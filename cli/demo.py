"""``xps demo``: the main job end to end, narrated. Grows with each capability."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from xpscerpto.engine import Engine
from xpscerpto.errors import AuthError, KeyError_

__all__ = ["run_demo"]


def _step(title: str) -> None:
    print(f"\n== {title}")


def run_demo(eng: Engine) -> int:
    """Self-tests, routing table, AEAD, signatures, key exchange, a rejected tamper."""
    _step("1. power-on self-tests (every provider x operation, before first use)")
    results = eng.state.selftests
    for r in results:
        print(f"  {'PASS' if r.passed else 'FAIL'}  {r.provider:<8} {r.operation}")
    failed = [r for r in results if not r.passed]
    print(f"  {len(results) - len(failed)}/{len(results)} passed")

    _step("2. routing table (operation -> provider)")
    table = eng.table
    for op, route in table.routes.items():
        print(f"  {op:<24} -> {route.provider:<8} ({route.backend})")
    for op, reason in table.unrouted.items():
        print(f"  {op:<24} -> not routed: {reason}")

    _step("3. AEAD: encrypt and decrypt with every routed algorithm")
    message, aad = b"attack at dawn", b"header:v1"
    from xpscerpto.engine import random_bytes

    for algo in sorted(table.aead):
        if not algo.isupper():  # show each algorithm once, by its public name
            continue
        info = eng.aead.info(algo)
        key = random_bytes(info["key_size"])
        sealed = eng.aead.encrypt(algo, key, message, aad)
        plain = eng.aead.decrypt(algo, key, sealed.nonce, sealed.ciphertext, sealed.tag, aad)
        assert plain == message
        print(f"  {algo:<20} via {info['provider']:<8} nonce {len(sealed.nonce):>2} B, "
              f"tag {len(sealed.tag)} B -> round trip ok")

    _step("4. a tampered ciphertext is rejected, no plaintext comes out, CRYPTO_FAIL_AUTH is journaled")
    import tempfile
    from pathlib import Path

    from xpscerpto.audit import AuditLog, journal_auth_failures

    key = random_bytes(32)
    sealed = eng.aead.encrypt("AES-256-GCM", key, message, aad)
    forged = bytearray(sealed.ciphertext)
    forged[0] ^= 0x01
    with tempfile.TemporaryDirectory(prefix="xps-demo-audit-") as d:
        log = AuditLog(Path(d) / "audit.log")
        detach = journal_auth_failures(eng, log)
        try:
            eng.aead.decrypt("AES-256-GCM", key, sealed.nonce, bytes(forged), sealed.tag, aad)
        except AuthError as exc:
            print(f"  rejected: {exc}")
        else:
            print("  ERROR: tampered ciphertext was accepted")
            return 1
        finally:
            detach()
        rec = log.tail(1)[0]
        print(f"  journaled: {rec['event']} operation={rec['operation']} call={rec['call']} "
              f"provider={rec['provider']} (no key, nonce or data in the record)")

    _step("5. signatures: Ed25519 and ML-DSA-65")
    pk, sk = eng.ed25519.generate_keypair()
    sig = eng.ed25519.sign(sk, message)
    eng.ed25519.verify(pk, message, sig)
    print(f"  Ed25519   via {eng.ed25519.provider}: 64-byte signature verifies; "
          f"altered message verifies: {eng.ed25519.is_valid(pk, message + b'!', sig)}")
    mpk, msk = eng.mldsa65.generate_keypair()
    msig = eng.mldsa65.sign(msk, message, context=b"demo")
    eng.mldsa65.verify(mpk, message, msig, context=b"demo")
    print(f"  ML-DSA-65 via {eng.mldsa65.provider}: {len(msig)}-byte signature verifies")
    sk.wipe()
    msk.wipe()

    _step("6. key exchange: X25519 + HKDF-SHA256, and ML-KEM-768")
    c_pk, c_sk = eng.x25519.generate_keypair()
    s_pk, s_sk = eng.x25519.generate_keypair()
    with eng.x25519.derive_shared(c_sk, s_pk) as c_shared, eng.x25519.derive_shared(s_sk, c_pk) as s_shared:
        assert c_shared == s_shared
        transcript = c_pk + s_pk
        with eng.hkdf.derive(c_shared, 64, salt=b"xps-demo", info=transcript) as okm:
            print(f"  X25519 shared secrets agree; HKDF derived {len(okm)} bytes of session keys")
    try:
        eng.x25519.derive_shared(c_sk, bytes(32))
    except KeyError_ as exc:
        print(f"  low-order peer key rejected: {exc}")
    ek, dk = eng.mlkem768.generate_keypair()
    ct, ss = eng.mlkem768.encapsulate(ek)
    assert eng.mlkem768.decapsulate(dk, ct) == ss
    print(f"  ML-KEM-768: {len(ct)}-byte ciphertext, both sides hold the same 32-byte secret")

    # The demo's own reference to the first table must not outlive the hot-patch step: that
    # table's drain is journaled in the step's temporary home when the last reference goes.
    del table
    if not _hot_patch(eng) or not _keyring(eng) or not _channel(eng) or not _measured(eng) or not _nodes(eng):
        return 1
    print("\ndemo complete" if not failed else "\ndemo complete, but some self-tests FAILED")
    return 0 if not failed else 1


def _hot_patch(eng: Engine) -> bool:
    """Publisher key -> capsule -> watched folder -> verify -> KAT -> cutover under load -> rollback."""
    import importlib.resources
    import shutil
    import tempfile
    import threading
    import time
    from pathlib import Path

    from xpscerpto.capsules.build import build_capsule
    from xpscerpto.capsules.control import request
    from xpscerpto.capsules.service import WatchService
    from xpscerpto.capsules.updater import StagePlan
    from xpscerpto.home import Home
    from xpscerpto.signing import TrustStore, generate_keypair, load_private_key

    op, algo = "aead.xchacha20poly1305", "XCHACHA20-POLY1305"
    with tempfile.TemporaryDirectory(prefix="xps-demo-") as d:
        tmp = Path(d)
        _step("7. publisher: key pair, then a signed capsule from capsules/demo-capsule")
        pub = generate_keypair(tmp / "publisher")
        print(f"  publisher key id {pub.keyid} (publisher.key written 0600)")
        src = importlib.resources.files("xpscerpto.capsules") / "demo-capsule"
        with importlib.resources.as_file(src) as src_dir:
            # A private copy of regular files (an editable install links them).
            shutil.copytree(src_dir, tmp / "src", ignore=shutil.ignore_patterns("__pycache__"))
        raw = build_capsule(tmp / "src", [load_private_key(tmp / "publisher.key")])
        print(f"  built xchacha20-openssl-1.0.0.capsule: {len(raw)} bytes, provides {op}")

        _step("8. operator: pin the key for aead.*, watch a folder, drop the capsule in")
        home = Home.resolve(tmp / "home")
        TrustStore().add(pub, ["aead.*"], "demo publisher").save(home.trust)
        inbox = tmp / "inbox"
        svc = WatchService(eng, inbox, home, plan=StagePlan(canary_share=0.25, canary_seconds=0.5,
                                                            dual_run_seconds=0.5)).start()
        stop, calls, failures = threading.Event(), [0], []
        patched_from = eng.table.provider_for(op)

        def traffic() -> None:
            key = bytes(range(32))
            while not stop.is_set():
                try:
                    s = eng.aead.encrypt(algo, key, b"payload", b"aad")
                    if eng.aead.open(algo, key, s, b"aad") != b"payload":
                        failures.append("wrong plaintext")
                    calls[0] += 1
                except Exception as exc:  # counted, not hidden: the demo fails on any
                    failures.append(f"{type(exc).__name__}: {exc}")

        workers = [threading.Thread(target=traffic) for _ in range(2)]
        try:
            for w in workers:
                w.start()
            print(f"  before: {op} served by {patched_from}; 2 threads calling it")
            part = inbox / "xchacha20-openssl-1.0.0.capsule.part"
            part.write_bytes(raw)
            part.rename(inbox / "xchacha20-openssl-1.0.0.capsule")
            deadline = time.monotonic() + 60
            while eng.table.provider_for(op) != "xchacha20-openssl" and time.monotonic() < deadline:
                time.sleep(0.05)
            svc.inbox.wait_idle(30)
            for e in svc.updater.audit.tail(30):
                if e["event"].startswith("PATCH_") and e["event"] != "PATCH_DRAINED":
                    detail = e.get("phase") or e.get("reason") or e.get("version") or ""
                    print(f"  audit {e['event']:<14} {detail}")
            print(f"  after:  {op} served by {eng.table.provider_for(op)}; moved to "
                  f"{'accepted/' if (inbox / 'accepted' / 'xchacha20-openssl-1.0.0.capsule').exists() else '?'}")

            _step("9. operator: `xps rollback aead.xchacha20poly1305` through the control socket")
            answer = request(home.socket, {"cmd": "rollback", "target": op, "operator": "demo"})
            print(f"  {'ok' if answer.get('ok') else answer}: {op} served by {eng.table.provider_for(op)}")
            time.sleep(0.2)
        finally:
            stop.set()
            for w in workers:
                w.join()
            svc.stop()
        print(f"  {calls[0]} calls during swap and rollback, {len(failures)} failed")
        ok = eng.table.provider_for(op) == patched_from and not failures and calls[0] > 0
        if not ok:
            print(f"  ERROR: expected {op} back on {patched_from} with every call served; "
                  f"first failures: {failures[:3]}")
        return ok


def _keyring(eng: Engine) -> bool:
    """A key's life: create, encrypt, rotate (old blobs still open), revoke, audit verified."""
    import tempfile
    from pathlib import Path

    from xpscerpto.audit import AuditLog
    from xpscerpto.errors import AuthError
    from xpscerpto.keyring import Keyring

    with tempfile.TemporaryDirectory(prefix="xps-demo-keyring-") as d, Keyring(Path(d), engine=eng) as ring:
        _step("10. keyring: a named key, self-describing ciphertexts, rotation, revocation")
        kid = ring.create("orders", "AES-256-GCM", policy="rotate=90d")
        print(f"  created key 'orders' ({kid}); material wrapped under a 0600 local KEK file")
        blob = ring.encrypt("orders", b"card 4111", aad=b"order:42")
        print(f"  blob: format 1, key id, version 1, algorithm, 32-byte key commitment, nonce, "
              f"ciphertext+tag = {len(blob)} bytes")
        ring.rotate("orders")
        new = ring.encrypt("orders", b"card 5500", aad=b"order:43")
        print(f"  rotated: new blobs use version {new[12]}; the version-1 blob still opens "
              f"inside the dual-key window: {ring.decrypt(blob, aad=b'order:42')!r}")
        ring.revoke("orders", "demo: suspected compromise")
        try:
            ring.decrypt(new, aad=b"order:43")
        except AuthError as exc:
            print(f"  revoked: decryption now fails opaquely: {exc}")
        else:
            return False
        report = AuditLog(Path(d) / "audit.log").verify()
        print(f"  audit journal: {report.records} hash-chained records verified "
              f"(KEY_CREATE, KEY_ROTATE, KEY_REVOKE, CRYPTO_FAIL_AUTH)")
    return True


def _channel(eng: Engine) -> bool:
    """Two services, certificates from one CA, a Noise XX channel with rekey, and a refused impostor."""
    import asyncio

    from xpscerpto.channel import Channel, ChannelConfig, Trust, connect, serve
    from xpscerpto.channel.pki import CertificateAuthority
    from xpscerpto.errors import XpsError

    _step("11. secure channel: mutual certificates inside a Noise handshake, AEAD records, rekey")
    ca = CertificateAuthority.create("Demo CA")
    inter = CertificateAuthority.create("Demo Issuing CA", parent=ca)
    server = inter.issue_identity("orders", dns=["orders.internal"], engine=eng)
    client = inter.issue_identity("billing", dns=["billing.internal"], engine=eng)
    impostor = CertificateAuthority.create("Other CA").issue_identity("orders", dns=["orders.internal"], engine=eng)
    trust = Trust([ca.certificate], [ca.crl(), inter.crl()], engine=eng)
    print("  CA -> issuing CA -> Ed25519 leaves for orders.internal and billing.internal; CRLs for both CAs")

    async def echo(ch: Channel) -> None:
        while msg := await ch.recv():
            await ch.send(msg)

    async def run() -> bool:
        cfg = ChannelConfig(rekey_after_messages=2)
        async with await serve("127.0.0.1", 0, server, trust, echo, expected_names=["billing.internal"],
                               config=cfg, engine=eng) as srv:
            for pq in (False, True):
                async with await connect("127.0.0.1", srv.port, client, trust, expected_name="orders.internal",
                                         config=ChannelConfig(rekey_after_messages=2, require_pq=pq),
                                         engine=eng) as ch:
                    replies = []
                    for i in range(3):
                        await ch.send(b"invoice %d" % i)
                        replies.append(await ch.recv())
                    print(f"  {ch.protocol}: peer {ch.peer.names[0]} (chain of {len(ch.peer.chain)}), "
                          f"3 messages echoed, {ch.transport.rekeys_sent} rekey(s) in step")
                    if replies != [b"invoice %d" % i for i in range(3)]:
                        return False
            try:
                await connect("127.0.0.1", srv.port, client, Trust([impostor.chain[-1]], engine=eng),
                              expected_name="orders.internal", engine=eng)
            except XpsError as exc:
                print(f"  a client trusting another CA refuses the real server: {exc}")
            else:
                return False
        print(f"  server: {srv.failures.established} channels established, "
              f"{sum(srv.failures.failures.values())} failed handshakes counted")
        return True

    return asyncio.run(run())


def _measured(eng: Engine) -> bool:
    """Autotune in miniature: measure openssl against sodium per size and call shape, route the winners."""
    from dataclasses import replace

    from .tune import describe_route

    _step("12. dispatch: measure the providers per size bucket and call shape, route the winners")
    tuned = Engine(replace(eng.config, providers=("openssl", "sodium"), autotune=False))
    result = tuned.autotune(budget=0.004, rounds=3)
    ops = sorted({m.operation for m in result.measurements})
    for op in ops:
        print(f"  {op:<24} {describe_route(tuned.table.routes[op])}")
    print(f"  {len(result.measurements)} measurements (result of {result.created}, cached for the engines of "
          "this machine); `xps tune` shows winner and runner-up with their figures")
    return bool(ops)


def _nodes(eng: Engine) -> bool:
    """Two nodes on one (throwaway) PostgreSQL: shared keys, one leader rotates once, revocation reach."""
    import shutil
    import tempfile
    import time
    from pathlib import Path

    from xpscerpto.config import XpsConfig
    from xpscerpto.errors import KeyError_
    from xpscerpto.home import Home
    from xpscerpto.keyring import Keyring

    _step("13. several nodes: keyring, lease, scheduled rotation and a PQ channel rollout on PostgreSQL")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        print("  skipped: install the postgresql extra (pip install 'xpscerpto[postgresql]')")
        return True
    from xpscerpto.db import Database, migrate
    from xpscerpto.db.throwaway import ThrowawayServer, server_bin
    from xpscerpto.orchestrator import Orchestrator, Plan

    found = server_bin()
    if found is None:
        print("  skipped: no PostgreSQL server binaries (Debian: apt-get install postgresql)")
        return True
    server = ThrowawayServer(found)
    rings: list[Keyring] = []
    try:
        dsn = server.create_database("xps_demo")
        db = Database(dsn)
        print(f"  throwaway PostgreSQL at {db.name}; `xps db migrate` applied {migrate(db)}")
        db.close()
        config = XpsConfig.from_mapping({"keyring": {"database": dsn}})
        with tempfile.TemporaryDirectory(prefix="xps-demo-nodes-") as d:
            a = Keyring(Path(d) / "node-a", engine=eng, config=config.keyring)
            rings.append(a)
            (Path(d) / "node-b").mkdir(mode=0o700)
            shutil.copy2(Path(d) / "node-a" / "kek.key", Path(d) / "node-b" / "kek.key")
            Home.resolve(Path(d) / "node-b").initialise(policy=config.security_policy(), adopt=True)
            b = Keyring(Path(d) / "node-b", engine=eng, config=config.keyring)
            rings.append(b)
            a.create("orders", "AES-256-GCM")
            blob = a.encrypt("orders", b"card 4111")
            print(f"  node-a created 'orders'; node-b (own home, same KEK) opens its blob: {b.decrypt(blob)!r}")
            orchs = [Orchestrator(r, node=n, lease_ttl=5, interval=0.2) for r, n in ((a, "node-a"), (b, "node-b"))]
            orchs[0].track(Plan("orders-hourly", key="orders", policy="every=1h", grace="7d"),
                           anchor=datetime.now(UTC) - timedelta(minutes=61))
            done = [run for _ in range(3) for o in orchs for run in o.tick()]
            status = orchs[1].status()
            print(f"  plan due an hour ago; 3 ticks on each node: rotations {done} by leader {status['leader']} "
                  f"(fencing token {status['token']})")
            b.encrypt("orders", b"warm")
            time.sleep(0.3)
            a.revoke("orders", "demo: suspected compromise")
            start = time.perf_counter()
            while time.perf_counter() - start < 2:
                try:
                    b.encrypt("orders", b"x")
                except KeyError_:
                    print(f"  revoked on node-a; node-b refused to encrypt "
                          f"{(time.perf_counter() - start) * 1e3:.0f} ms later (LISTEN/NOTIFY)")
                    break
            else:
                return False
            pq_ok = _pq_rollout(eng, orchs)
            for r in rings:
                r.close()
            rings.clear()
            return len(done) == 1 and pq_ok
    finally:
        for r in rings:
            r.close()
        server.close()


def _pq_rollout(eng: Engine, orchs: list[Any]) -> bool:
    """Step 13, continued: hybrid PQ channels rolled out over the two nodes, canary first."""
    from xpscerpto.channel import ChannelConfig, Trust
    from xpscerpto.channel import blocking as ch
    from xpscerpto.channel.pki import CertificateAuthority
    from xpscerpto.errors import XpsError
    from xpscerpto.orchestrator import PqPosture, PqRollout

    ca = CertificateAuthority.create("Fleet CA")
    trust = Trust([ca.certificate], [ca.crl()], engine=eng)
    base = ChannelConfig(handshake_timeout_seconds=5.0)
    names = [o.node for o in orchs]
    ids = {n: ca.issue_identity(n, dns=[f"{n}.internal"], engine=eng) for n in names}

    def echo(c: ch.BlockingChannel) -> None:
        while msg := c.recv():
            c.send(msg)

    servers = {n: ch.serve("127.0.0.1", 0, ids[n], trust, echo, config=base, engine=eng) for n in names}
    postures = {o.node: PqPosture(o.keyring, node=o.node, base=base, on_change=servers[o.node].reconfigure,
                                  poll=0.1).start() for o in orchs}

    def dial(src: str, dst: str, config: ChannelConfig | None = None) -> str:
        try:
            with ch.connect("127.0.0.1", servers[dst].port, ids[src], trust, expected_name=f"{dst}.internal",
                            config=config or postures[src].config, engine=eng) as c:
                c.send(b"hi")
                c.recv()
                return c.protocol.split("_")[1]
        except XpsError as exc:
            return f"refused ({exc.reason})"

    def settle(phase: str) -> None:
        for _ in range(100):
            for o in orchs:
                o.tick()
            if orchs[0].pq_status()[0]["phase"] == phase:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # the nodes follow by NOTIFY

    try:
        rollout = PqRollout("pq-demo", nodes=tuple(names), canary=0.5, watch="1s")
        orchs[0].roll_out_pq(rollout)
        canary = rollout.canary_nodes()[0]
        other = next(n for n in names if n != canary)
        time.sleep(0.3)
        print(f"  PQ rollout: canary {canary} offers {dial(canary, other)}, {other} still offers "
              f"{dial(other, canary)}")
        settle("committed")
        print(f"  canary healthy (fleet counters) -> committed: {other} offers {dial(other, canary)}")
        settle("retired")
        refused = dial(other, canary, base)
        print(f"  no classic channel for a watch -> retired: a classic offer is {refused}")
        return refused == "refused (pq-required)"
    finally:
        for posture in postures.values():
            posture.stop()
        for server in servers.values():
            server.close()
