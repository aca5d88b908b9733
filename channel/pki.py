"""A small certificate authority for channel tests and demos: Ed25519 CAs, leaves and CRLs.

Not a production CA (no OCSP, no policy OIDs, no HSM); it makes exactly the certificates the
channel verifies (:mod:`.identity`): CAs with ``cA`` and ``keyCertSign``/``cRLSign``, leaves
with ``digitalSignature``, clientAuth+serverAuth, DNS/URI SANs, key identifiers, 128-bit random
serials. Issuance uses ``cryptography.x509`` builders directly (they need the key object).

A CA directory holds ``ca.crt`` (this CA's certificate, then its parents up to the root),
``ca.key`` (PKCS#8 PEM, 0600, encrypted when a passphrase is given) and ``revoked.json``
(serials revoked so far, replaced atomically under the lock file ``revoked.json.lock``).
While ``init-ca`` writes them, the marker ``init-ca.unfinished`` is there (see :meth:`CertificateAuthority.save`).
``xps pki init-ca|issue|revoke|crl`` are thin commands over this module.

Example:
    >>> ca = CertificateAuthority.create("Example CA")
    >>> chain, key = ca.issue("svc", dns=["svc.example"])
    >>> chain[0].issuer == ca.certificate.subject
    True
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from xpscerpto._atomic import atomic_write, create_exclusive, fsync_dir, locked_beside, sweep_stale_temps
from xpscerpto._stored_file import read_stored
from xpscerpto.errors import KeyError_, PolicyError

from .identity import Identity, load_certificates

if TYPE_CHECKING:
    from xpscerpto.engine import Engine

__all__ = ["CertificateAuthority", "Revocation", "passphrase_from_env", "pem_chain", "write_private_key",
           "write_static_key"]

_DAY = dt.timedelta(days=1)
#: The longest validity issued (a century): far past any use, far below datetime's year 9999.
MAX_DAYS = 36_500
_SKEW = dt.timedelta(minutes=5)  # backdate not_before so peers with slightly slow clocks agree
_LEAF_KU = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)
_CA_KU = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                       encipher_only=False, decipher_only=False)
#: The files of a CA directory; ``init-ca`` refuses a directory holding any of them.
CA_FILES = ("ca.crt", "ca.key", "revoked.json")
#: Created before the first CA file and removed after the last: while it is there the directory
#: is an init-ca that was killed before it finished, never a CA (load refuses it, init-ca replaces it).
UNFINISHED = "init-ca.unfinished"
_UNFINISHED_NOTE = b"xps pki init-ca is writing this CA (or was killed doing so: run it again)\n"
#: Serials as ``revoked.json`` spells them (lowercase hex, as written), and the range X.509
#: allows (RFC 5280 4.1.2.2: positive, at most 20 octets), so a CRL can carry every one.
_SERIAL_HEX = re.compile(r"[0-9a-fA-F]{1,40}")
_MAX_SERIAL = 2**159
#: The earliest revocation time a CRL entry can carry (UTCTime starts in 1950).
_MIN_TIME = dt.datetime(1950, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked serial: when, and why (free text kept for operators)."""

    serial: int
    time: dt.datetime
    reason: str = ""


def _check_days(days: object) -> None:
    """``days`` a finite number in (0, MAX_DAYS], else PolicyError (not an OverflowError later)."""
    # Compared, never converted first: NaN and inf fail the comparison, a huge int is no OverflowError.
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= MAX_DAYS:
        raise PolicyError(f"days: expected a number of days > 0 and <= {MAX_DAYS}")


def _usages(value: object) -> list[x509.ObjectIdentifier]:
    """Extended key usages as a list of OIDs (a string is not a list of them)."""
    # Empty is refused too: an ExtendedKeyUsage extension must name at least one usage (None
    # omits the extension).
    problem = PolicyError("extended_key_usage: expected a non-empty list of x509 ObjectIdentifiers, or None")
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise problem
    usages = list(value)
    if not usages or not all(isinstance(u, x509.ObjectIdentifier) for u in usages):
        raise problem
    return usages


def _validity(not_before: object, not_after: object, days: float) -> tuple[dt.datetime, dt.datetime]:
    """The certificate's validity: explicit times checked (aware, from 1950 on; a naive one would
    be read as UTC whatever zone was meant), else now minus the clock skew, plus ``days``."""
    now = dt.datetime.now(dt.UTC)
    start = now - _SKEW if not_before is None else _crl_time(not_before, "not_before")
    end = now + days * _DAY if not_after is None else _crl_time(not_after, "not_after")
    if end <= start:
        raise PolicyError("not_after: expected a time later than not_before")
    return start, end


def _sans(dns: Iterable[str], uris: Iterable[str]) -> list[x509.GeneralName]:
    """The SANs, in the form the verifier matches (identity._san_names ignores any other)."""
    for field, names in (("dns", dns), ("uris", uris)):
        if isinstance(names, str | bytes) or not isinstance(names, Iterable):
            raise PolicyError(f"{field}: expected a list of names")
    sans: list[x509.GeneralName] = []
    for d in dns:
        if not isinstance(d, str) or not d or not d.isascii() or not d.isprintable() or "://" in d:
            raise PolicyError("dns: expected ASCII DNS names (internationalised ones in their xn-- form)")
        sans.append(x509.DNSName(d))
    for u in uris:
        if not isinstance(u, str) or not u.isascii() or not u.isprintable() or "://" not in u:
            raise PolicyError("uris: expected ASCII URIs of the form scheme://…")
        sans.append(x509.UniformResourceIdentifier(u))
    return sans


def _name(common_name: str) -> x509.Name:
    if not isinstance(common_name, str) or not common_name.strip() or len(common_name) > 64:
        raise PolicyError("name: expected a non-empty common name of at most 64 characters")
    if not common_name.isprintable():
        # A lone surrogate cannot be encoded into the certificate (UnicodeEncodeError escaped),
        # and a control character would reach every terminal that shows the name.
        raise PolicyError("name: expected a printable common name (no control characters or lone surrogates)")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_private_key(path: Path, key: ed25519.Ed25519PrivateKey, passphrase: bytes | None = None) -> None:
    """Write ``key`` as PKCS#8 PEM, 0600, never replacing a file (passphrase: encrypted PKCS#8)."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    pem = bytearray(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    try:
        if not create_exclusive(path, pem, 0o600):
            raise PolicyError(f"{path.name}: already exists (refusing to replace a private key)")
    finally:
        pem[:] = bytes(len(pem))


def _load_key(path: Path, passphrase: bytes | None) -> ed25519.Ed25519PrivateKey:
    try:
        raw = read_stored(path)
    except OSError as exc:
        raise PolicyError(f"{path.name}: cannot read ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(raw, password=passphrase)
    except TypeError:
        raise KeyError_(f"{path.name}: encrypted and no passphrase given (or a passphrase for a plain key)") from None
    except ValueError:
        raise KeyError_(f"{path.name}: not a PEM private key, or the passphrase is wrong") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyError_(f"{path.name}: not an Ed25519 private key")
    return key


class CertificateAuthority:
    """An Ed25519 CA: its certificate, its parents' and its key.

    Use :meth:`create` or :meth:`load`; the constructor takes the parts as they are.
    """

    def __init__(self, chain: Sequence[x509.Certificate], key: ed25519.Ed25519PrivateKey,
                 revoked: Iterable[Revocation] = ()) -> None:
        self.chain = tuple(chain)
        self._key = key
        self.revoked = tuple(revoked)

    @property
    def certificate(self) -> x509.Certificate:
        """This CA's own certificate."""
        return self.chain[0]

    def __repr__(self) -> str:
        return f"<CertificateAuthority {self.certificate.subject.rfc4514_string()} (key redacted)>"

    # -- making certificates -----------------------------------------------------------

    @classmethod
    def create(cls, name: str, *, days: int = 3650, parent: CertificateAuthority | None = None,
               path_length: int | None = None, not_before: dt.datetime | None = None,
               not_after: dt.datetime | None = None) -> CertificateAuthority:
        """A new root CA, or an intermediate signed by ``parent``.

        Raises:
            PolicyError: a bad ``name``, ``days``, ``parent`` (not a CertificateAuthority),
                ``path_length`` (not an int in 0..2**31 - 1) or validity (see :meth:`issue`).
        """
        _check_days(days)
        if parent is not None and not isinstance(parent, CertificateAuthority):
            raise PolicyError("parent: expected a CertificateAuthority")
        if path_length is not None and (type(path_length) is not int or not 0 <= path_length < 1 << 31):
            raise PolicyError("path_length: expected an int in 0..2**31 - 1")
        subject = _name(name)
        not_before, not_after = _validity(not_before, not_after, days)
        key = ed25519.Ed25519PrivateKey.generate()
        issuer_key = parent._key if parent else key
        builder = (x509.CertificateBuilder()
                   .subject_name(subject)
                   .issuer_name(parent.certificate.subject if parent else subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before)
                   .not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
                   .add_extension(_CA_KU, critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                  critical=False))
        cert = builder.sign(issuer_key, None)
        return cls((cert, *(parent.chain if parent else ())), key)

    def issue(self, name: str, *, dns: Iterable[str] = (), uris: Iterable[str] = (), days: int = 365,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              key_usage: x509.KeyUsage | None = _LEAF_KU,
              extended_key_usage: Sequence[x509.ObjectIdentifier] | None = (
                  ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH),
              key: ed25519.Ed25519PrivateKey | None = None,
              ) -> tuple[list[x509.Certificate], ed25519.Ed25519PrivateKey]:
        """A leaf certificate and its new key; the chain is the leaf then this CA's chain minus the root.

        ``key_usage=None`` / ``extended_key_usage=None`` omit those extensions (tests of
        certificates the verifier must refuse use them).

        Raises:
            PolicyError: a bad ``name``, ``dns``/``uris`` (lists of ASCII names), ``days``,
                ``key``, ``key_usage`` or ``extended_key_usage`` (OIDs); ``not_before`` or
                ``not_after`` not a timezone-aware datetime from 1950-01-01 UTC on, or
                ``not_after`` not later than ``not_before``.
        """
        _check_days(days)
        _name(name)
        sans = _sans(dns, uris)
        if key is not None and not isinstance(key, ed25519.Ed25519PrivateKey):
            raise PolicyError("key: expected an Ed25519 private key")
        if key_usage is not None and not isinstance(key_usage, x509.KeyUsage):
            raise PolicyError("key_usage: expected an x509.KeyUsage")
        if extended_key_usage is not None:
            extended_key_usage = _usages(extended_key_usage)
        not_before, not_after = _validity(not_before, not_after, days)
        leaf_key = key or ed25519.Ed25519PrivateKey.generate()
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(name))
                   .issuer_name(self.certificate.subject)
                   .public_key(leaf_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before)
                   .not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                                  critical=False))
        if key_usage is not None:
            builder = builder.add_extension(key_usage, critical=True)
        if extended_key_usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        leaf = builder.sign(self._key, None)
        return [leaf, *self._below_root()], leaf_key

    def issue_identity(self, name: str, *, dns: Iterable[str] = (), uris: Iterable[str] = (), days: int = 365,
                       engine: Engine | None = None) -> Identity:
        """:meth:`issue`, as an :class:`~xpscerpto.channel.identity.Identity` with a fresh static key."""
        chain, key = self.issue(name, dns=dns, uris=uris, days=days)
        return Identity(chain, bytearray(key.private_bytes_raw()), engine=engine)

    def _below_root(self) -> list[x509.Certificate]:
        return [c for c in self.chain if c.issuer != c.subject]

    def revoke(self, serial: int, reason: str = "", when: dt.datetime | None = None) -> CertificateAuthority:
        """A CA with ``serial`` added to its revoked list (idempotent); ``when`` defaults to now.

        Raises:
            PolicyError: ``serial`` is not an int in 1..2**159 - 1 (what a certificate serial can
                be); ``reason`` is not a str; ``when`` is not a timezone-aware datetime from
                1950-01-01 UTC on that stays within datetime's range in UTC (a CRL cannot carry
                an earlier time; a naive one would be read back as UTC whatever zone was meant).
                Checked even for a serial already revoked; this CA is left unchanged.
        """
        if isinstance(serial, bool) or not isinstance(serial, int) or not 1 <= serial < _MAX_SERIAL:
            raise PolicyError("serial: expected an int in 1..2**159 - 1")
        if not isinstance(reason, str):
            raise PolicyError("reason: expected a str")
        time = dt.datetime.now(dt.UTC) if when is None else _crl_time(when, "when")
        if any(r.serial == serial for r in self.revoked):
            return self
        rev = Revocation(serial, time, reason)
        return CertificateAuthority(self.chain, self._key, (*self.revoked, rev))

    def crl(self, *, days: float = 7, last_update: dt.datetime | None = None,
            next_update: dt.datetime | None = None) -> x509.CertificateRevocationList:
        """A CRL of every revoked serial, valid ``days`` from now (or the explicit window).

        Raises:
            PolicyError: ``days`` out of range, or ``last_update``/``next_update`` not a
                timezone-aware datetime a CRL can carry (see :meth:`revoke`).
        """
        _check_days(days)
        if last_update is not None:
            last_update = _crl_time(last_update, "last_update")
        if next_update is not None:
            next_update = _crl_time(next_update, "next_update")
        now = dt.datetime.now(dt.UTC)
        last = last_update or now - _SKEW
        nxt = next_update or now + dt.timedelta(days=days)
        if nxt <= last:
            # The builder refuses this too, but untyped (ValueError) and naming no field.
            raise PolicyError("next_update: must be after last_update (with the default window, last_update "
                              "must be before now + days)")
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self.certificate.subject)
                   .last_update(last)
                   .next_update(nxt))
        for r in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(r.serial).revocation_date(r.time).build())
        return builder.sign(self._key, None)

    # -- files ---------------------------------------------------------------------------

    def save(self, folder: str | Path, passphrase: bytes | None = None) -> None:
        """Write a new CA directory: after a crash (even kill -9) it holds a whole CA or an unfinished one.

        The marker ``init-ca.unfinished`` is created first and removed only once ``ca.key``,
        ``ca.crt`` and ``revoked.json`` have all landed (each written atomically). A directory
        holding the marker was never a CA: :meth:`load` refuses it, and the next ``save``
        replaces its parts.

        Raises:
            PolicyError: the directory holds any CA file already (``ca.crt``, ``ca.key``,
                ``revoked.json``) and no marker: a CA whose key went missing is not silently
                replaced, and its revocations are kept.
        """
        d = Path(folder)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        marker = d / UNFINISHED
        with locked_beside(d / "revoked.json", f"CA directory {d.name}: revoked.json"):
            if _exists(marker):
                self._discard_unfinished(d)
            else:
                present = [name for name in CA_FILES if _exists(d / name)]
                if present:
                    raise PolicyError(f"CA directory {d.name}: already holds a CA (or part of one): "
                                      f"{', '.join(present)}; restore the missing files from a backup, "
                                      "or use a new directory")
                _sweep_temps(d)  # of an init-ca killed before its marker landed
                if not create_exclusive(marker, _UNFINISHED_NOTE, 0o600):
                    raise PolicyError(f"CA directory {d.name}: {UNFINISHED} appeared while the CA was being written")
            written: list[Path] = []
            try:
                write_private_key(d / "ca.key", self._key, passphrase)
                written.append(d / "ca.key")
                # Created, never replaced: a writer outside these commands is not overwritten either.
                for name, data in (("ca.crt", pem_chain(self.chain)), ("revoked.json", _revoked_doc(self.revoked))):
                    if not create_exclusive(d / name, data, 0o644):
                        raise PolicyError(f"CA directory {d.name}: {name} appeared while the CA was being written")
                    written.append(d / name)
            except BaseException:
                # Parts first, marker last: killed in between, the marker still says "unfinished".
                for path in written:
                    path.unlink(missing_ok=True)
                marker.unlink(missing_ok=True)
                raise
            # The commit: from here on the directory is a CA.
            marker.unlink()
            fsync_dir(d)

    @staticmethod
    def _discard_unfinished(d: Path) -> None:
        """Remove what a killed ``save`` left in ``d`` (caller holds the directory's lock; the marker stays).

        Those parts were never a CA (``load`` refuses a directory with the marker) and nothing was
        reported: replacing them loses nothing.
        """
        for name in CA_FILES:
            (d / name).unlink(missing_ok=True)
        _sweep_temps(d)
        fsync_dir(d)

    def save_revoked(self, folder: str | Path) -> None:
        """Add this CA's revocations to the directory's ``revoked.json`` (never removing one).

        The file is re-read and replaced under the directory's lock (``revoked.json.lock``), so
        revocations saved by another process since this CA was loaded are kept, not overwritten.

        Raises:
            PolicyError: the lock cannot be taken, ``revoked.json`` is malformed, or the directory
                is an unfinished init-ca (nothing written).
        """
        d = Path(folder)
        with locked_beside(d / "revoked.json", f"CA directory {d.name}: revoked.json"):
            _refuse_unfinished(d)
            try:
                doc = json.loads(read_stored(d / "revoked.json"))
            except FileNotFoundError:
                doc = {"revoked": []}
            except OSError as exc:
                raise PolicyError(f"CA directory {d.name}: cannot read revoked.json ({exc.strerror})") from None
            except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
                raise PolicyError(f"CA directory {d.name}: revoked.json is not JSON") from None
            saved = _parse_revoked(doc, d)
            known = {r.serial for r in saved}
            merged = [*saved, *(r for r in self.revoked if r.serial not in known)]
            atomic_write(d / "revoked.json", _revoked_doc(merged), 0o644)

    @classmethod
    def load(cls, folder: str | Path, passphrase: bytes | None = None) -> CertificateAuthority:
        """Read a CA directory written by :meth:`save`.

        Raises:
            PolicyError: a file is missing or malformed (never silently reset), or an init-ca
                of the directory was killed before it finished (``init-ca.unfinished``).
            KeyError_: the key is wrong, encrypted without a passphrase, or not the CA's.
        """
        d = Path(folder)
        _refuse_unfinished(d)
        try:
            chain = load_certificates(read_stored(d / "ca.crt"))
            doc = json.loads(read_stored(d / "revoked.json"))
        except OSError as exc:
            raise PolicyError(f"CA directory {d.name}: cannot read ({exc.strerror})") from None
        except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
            raise PolicyError(f"CA directory {d.name}: revoked.json is not JSON") from None
        revoked = _parse_revoked(doc, d)
        key = _load_key(d / "ca.key", passphrase)
        if key.public_key() != chain[0].public_key():
            raise KeyError_(f"CA directory {d.name}: ca.key does not belong to ca.crt")
        return cls(chain, key, revoked)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _sweep_temps(d: Path) -> None:
    """Remove the temps a killed init-ca left in ``d`` (caller holds the directory's lock).

    At once, not after the usual delay: every writer of these names (``save``, ``save_revoked``)
    holds that lock, so none of them is a live writer's. One may hold the CA's private key.
    """
    for name in (*CA_FILES, UNFINISHED):
        sweep_stale_temps(d, target=name, older_than=0)


def _refuse_unfinished(d: Path) -> None:
    """PolicyError if an init-ca of ``d`` was killed before it finished (its parts are no CA)."""
    if _exists(d / UNFINISHED):
        raise PolicyError(f"CA directory {d.name}: an init-ca of it was interrupted before it finished "
                          f"({UNFINISHED} is there): it holds no CA; run `xps pki init-ca` on it again")


def _revoked_doc(revoked: Iterable[Revocation]) -> bytes:
    doc = {"revoked": [{"serial": format(r.serial, "x"), "time": r.time.isoformat(), "reason": r.reason}
                       for r in revoked]}
    return (json.dumps(doc, indent=1) + "\n").encode()


def _parse_revoked(doc: Any, d: Path) -> list[Revocation]:
    """``revoked.json``'s entries, each one a CRL can carry, else PolicyError naming the entry and field.

    Checked here rather than met when a CRL is signed, where cryptography's own ValueError
    would name neither the file nor the field.
    """
    entries = doc.get("revoked") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise PolicyError(f"CA directory {d.name}: revoked.json is malformed (no \"revoked\" list)")
    out = []
    for i, entry in enumerate(entries, 1):
        field = _bad_field(entry)
        if field is not None:
            raise PolicyError(f"CA directory {d.name}: revoked.json is malformed (entry {i}: {field})")
        out.append(Revocation(int(entry["serial"], 16), _utc(entry["time"]), entry.get("reason", "")))
    return out


def _bad_field(entry: object) -> str | None:
    """The first field of a ``revoked.json`` entry that is missing or out of range, or None."""
    if not isinstance(entry, dict):
        return "not an object"
    serial = entry.get("serial")
    if not isinstance(serial, str) or not _SERIAL_HEX.fullmatch(serial) or not 1 <= int(serial, 16) < _MAX_SERIAL:
        return "serial"
    time = entry.get("time")
    if not isinstance(time, str):
        return "time"
    try:
        when = _utc(time)
    except (ValueError, OverflowError):  # not ISO 8601, or an offset that leaves datetime's range
        return "time"
    if when < _MIN_TIME:
        return "time"
    if not isinstance(entry.get("reason", ""), str):
        return "reason"
    return None


def _crl_time(when: object, field: str) -> dt.datetime:
    """``when`` in UTC if a CRL can carry it, else PolicyError naming ``field``.

    Refused here, not when a CRL is signed: once stored it would make every later ``crl``
    (and every ``load`` of the saved ``revoked.json``) fail.
    """
    if not isinstance(when, dt.datetime):
        raise PolicyError(f"{field}: expected a timezone-aware datetime")
    try:
        utc = None if when.utcoffset() is None else when.astimezone(dt.UTC)
    except (ValueError, TypeError, OverflowError):
        # A tzinfo giving no valid offset, or a time that leaves years 1..9999 once in UTC.
        raise PolicyError(f"{field}: expected a datetime within years 1950..9999 in UTC") from None
    if utc is None:
        # Written without an offset it would be read back as UTC, whatever zone was meant.
        raise PolicyError(f"{field}: expected a timezone-aware datetime, got a naive one")
    if utc < _MIN_TIME:
        raise PolicyError(f"{field}: expected a time from 1950-01-01 UTC on (a CRL cannot carry an earlier one)")
    return utc


def _utc(text: str) -> dt.datetime:
    """An ISO 8601 time in UTC; one without an offset is taken as UTC (older ``revoke`` wrote naive ones)."""
    when = dt.datetime.fromisoformat(text)
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def pem_chain(chain: Iterable[x509.Certificate]) -> bytes:
    """Certificates as concatenated PEM."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def write_static_key(path: Path, key: bytes | bytearray | memoryview) -> None:
    """Write a raw 32-byte X25519 static key, 0600, never replacing a file."""
    if not create_exclusive(path, key, 0o600):
        raise PolicyError(f"{path.name}: already exists (refusing to replace a private key)")


def passphrase_from_env(name: str | None) -> bytes | None:
    """The passphrase held by environment variable ``name`` (never taken from the command line).

    Raises:
        PolicyError: the variable is unset, empty, or not UTF-8 text (the same passphrase typed
            in another locale would give other bytes); the message names the variable only.
    """
    if name is None:
        return None
    if not isinstance(name, str) or not name.isascii() or not name.isprintable() or not name:
        raise PolicyError("passphrase: expected the name of an environment variable")
    value = os.environ.get(name)
    if not value:
        raise PolicyError(f"passphrase: environment variable {name} is not set or empty")
    try:
        raw: bytes | None = value.encode()
    except UnicodeEncodeError:
        raw = None
    # Raised outside the handler: the UnicodeEncodeError quotes a byte of the secret and its
    # position, and would ride along as the refusal's __context__.
    if raw is None:
        raise PolicyError(f"passphrase: environment variable {name} is not valid UTF-8 text")
    return raw
