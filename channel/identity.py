"""Who a channel endpoint is, and whom it trusts: X.509 certificates with Ed25519 keys.

An :class:`Identity` is a certificate chain (leaf first), the leaf's Ed25519 key and a static
X25519 key. A :class:`Trust` is a set of CA certificates, CRLs and limits; :meth:`Trust.verify`
checks a peer's chain the way the handshake needs it, in order:

1. ``check_shape``: 1..``max_chain`` certificates, each DER within bounds and every field of it
   parsed (cryptography parses lazily), Ed25519 keys only;
2. ``check_path``: each certificate signed by the next, the last by (or equal to) a trusted CA;
3. ``check_validity``: every certificate on the path valid at ``now``;
4. ``check_ca_constraints`` / ``check_leaf_usage``: CAs have ``cA`` and ``keyCertSign`` (and
   their path length), and every DNS, URI and IP SAN below a CA lies within that CA's
   NameConstraints, critical or not (a constraint of another type fails the chain); the leaf is
   no CA, has ``digitalSignature`` and, if it has an extended key usage, the purpose of its role
   (clientAuth/serverAuth); no unknown critical extension;
5. ``check_name``: one of the expected names among the leaf's DNS or URI SANs (ASCII; a name
   with ``://`` matches URI SANs only, any other DNS SANs only);
6. ``check_revocation``: for every issued certificate, a CRL of its issuer, signed by it, current
   (an expired CRL fails), not listing the serial.

Every signature (certificates, CRLs, the handshake's) is verified through the engine's
``ed25519`` route. A chain that passed every check is remembered (by the SHA-256 of its DER,
with the purpose): presenting it again re-runs only what depends on the clock or the caller,
the validity periods, the name and the CRLs' update times, so a server's repeat clients cost
a hash and a few comparisons rather than parsing and path building. Failures raise
:class:`ChannelAuthError` with a ``reason`` from a closed set (``cert-untrusted``,
``cert-expired`` …) and a message that quotes nothing from the peer.

Example:
    >>> from xpscerpto.channel.pki import CertificateAuthority
    >>> ca = CertificateAuthority.create("Example CA")
    >>> ident = ca.issue_identity("svc", dns=["svc.example"])
    >>> peer = Trust([ca.certificate]).verify(ident.chain_der, purpose="server", expected_names=["svc.example"])
    >>> peer.names
    ('svc.example',)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn, TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, SignatureAlgorithmOID
from xpscerpto._buffers import byte_buffer
from xpscerpto._stored_file import read_stored
from xpscerpto.errors import AuthError, KeyError_, PolicyError
from xpscerpto.keyed import KeyedExchange
from xpscerpto.secret import SecretBytes

if TYPE_CHECKING:
    from xpscerpto.engine import Engine

__all__ = ["ChannelAuthError", "Identity", "PeerCertificate", "Purpose", "Trust", "load_certificates", "load_crls"]

Purpose = Literal["client", "server"]
E = TypeVar("E", bound=x509.ExtensionType)
T = TypeVar("T")
#: Largest certificate accepted in a chain (bytes of DER).
MAX_CERT_DER = 16 * 1024
#: Verified certificate/CRL signatures remembered per Trust.
_MAX_VERIFIED = 4096
#: Chains that passed every check, remembered per Trust.
_MAX_CHAINS = 1024
_KNOWN_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE,
                             ExtensionOID.EXTENDED_KEY_USAGE, ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
                             ExtensionOID.NAME_CONSTRAINTS})
#: NameConstraints subtree types enforced (:func:`_check_name_constraints`); a CA constraining any
#: other type is refused whatever the extension's criticality, since skipping a constraint widens
#: what that CA may vouch for.
_CONSTRAINED_TYPES = (x509.DNSName, x509.UniformResourceIdentifier, x509.IPAddress)
_EKU = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}
#: What cryptography raises for DER it cannot read: lazily, on the first access to a field, and
#: not only as ValueError (an unknown key algorithm, an unknown X.509 version).
_PARSE_ERRORS = (ValueError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension,
                 x509.UnsupportedGeneralNameType)
#: CRL extensions understood here, so allowed to be critical. A delta CRL (DeltaCRLIndicator) or
#: a scoped one (IssuingDistributionPoint) lists only part of the issuer's revocations: taken for
#: the full CRL it would un-revoke every certificate it leaves out, so both are refused outright.
_KNOWN_CRL_CRITICAL = frozenset({ExtensionOID.CRL_NUMBER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
                                 ExtensionOID.ISSUER_ALTERNATIVE_NAME})
_PARTIAL_CRL = frozenset({ExtensionOID.DELTA_CRL_INDICATOR, ExtensionOID.ISSUING_DISTRIBUTION_POINT})


class ChannelAuthError(AuthError):
    """A peer failed authentication; ``reason`` names the check (never the peer's data)."""


def _fail(reason: str, message: str) -> NoReturn:
    raise ChannelAuthError(f"peer certificate: {message}", reason=reason)


def _engine(engine: Engine | None) -> Engine:
    if engine is not None:
        return engine
    import xpscerpto

    return xpscerpto.default_engine()


def _ed25519_raw(cert: x509.Certificate) -> bytes:
    try:
        key = cert.public_key()
    except UnsupportedAlgorithm:  # a key algorithm cryptography does not know is not Ed25519 either
        _fail("cert-key-type", "certificate key is not Ed25519")
    except ValueError:
        _fail("cert-malformed", "a certificate's public key does not parse")
    if not isinstance(key, ed25519.Ed25519PublicKey):
        _fail("cert-key-type", "certificate key is not Ed25519")
    return key.public_bytes_raw()


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM (one or more) or a single DER certificate.

    Raises:
        PolicyError: nothing parseable.
    """
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except _PARSE_ERRORS:
        raise PolicyError("certificate: not a PEM or DER X.509 certificate") from None
    return certs


def load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """CRLs from PEM (one or more) or a single DER CRL."""
    try:
        if b"-----BEGIN" in data:
            blocks = [b"-----BEGIN" + part for part in data.split(b"-----BEGIN")[1:]]
            return [x509.load_pem_x509_crl(b) for b in blocks]
        return [x509.load_der_x509_crl(data)]
    except _PARSE_ERRORS:
        raise PolicyError("crl: not a PEM or DER X.509 CRL") from None


def _read(path: str | Path, what: str) -> bytes:
    try:
        return read_stored(Path(path))
    except OSError as exc:
        raise PolicyError(f"{what} {Path(path).name}: cannot read ({exc.strerror})") from None


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The authenticated peer: its verified leaf, chain and names, and its static key.

    Attributes:
        certificate: the verified leaf certificate.
        chain: the path as verified, leaf first, ending with the trusted CA.
        names: the leaf's DNS and URI subject alternative names.
        static_public: the X25519 static key the peer's signature bound (empty if it has none).
    """

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    names: tuple[str, ...]
    static_public: bytes = b""

    @property
    def subject(self) -> str:
        """The leaf's subject as an RFC 4514 string."""
        return self.certificate.subject.rfc4514_string()

    def with_static(self, static_public: bytes) -> PeerCertificate:
        """The same peer, with the static key its handshake signature bound."""
        return PeerCertificate(self.certificate, self.chain, self.names, static_public)


class Identity:
    """An endpoint's certificate chain, Ed25519 signing key and static X25519 key.

    Args:
        chain: leaf first, then intermediates (not the root).
        signing_key: the leaf's Ed25519 private key (32-byte seed).
        static_key: the X25519 static private key; a fresh one is generated if omitted (fine
            for XX; IK/KK peers must know it in advance, so load it from a file there).
        engine: the engine used to derive public keys and sign.

    Raises:
        KeyError_: the signing key does not match the leaf, or a key has the wrong size.

    Example:
        >>> from xpscerpto.channel.pki import CertificateAuthority
        >>> ident = CertificateAuthority.create("CA").issue_identity("svc", dns=["svc.example"])
        >>> len(ident.static_public)
        32
    """

    __slots__ = ("_engine", "_signer", "_signing", "_static", "_static_keyed", "chain", "chain_der",
                 "static_public")

    def __init__(self, chain: Sequence[x509.Certificate], signing_key: bytes | bytearray | SecretBytes,
                 static_key: bytes | bytearray | SecretBytes | None = None, *, engine: Engine | None = None) -> None:
        eng = _engine(engine)
        # A str or bytes is iterable too: checked here, not met as an AttributeError below.
        if not isinstance(chain, list | tuple) or not all(isinstance(c, x509.Certificate) for c in chain):
            raise PolicyError("chain: expected a list of x509.Certificate, leaf first")
        if not chain:
            raise PolicyError("chain: at least the leaf certificate is needed")
        self.chain = tuple(chain)
        self.chain_der = tuple(c.public_bytes(serialization.Encoding.DER) for c in self.chain)
        self._engine = eng
        self._signing = SecretBytes(signing_key.view() if isinstance(signing_key, SecretBytes) else signing_key)
        if len(self._signing) != 32:
            raise KeyError_("signing_key: expected a 32-byte Ed25519 seed")
        try:
            leaf_pub = _ed25519_raw(self.chain[0])
        except ChannelAuthError:
            raise KeyError_("chain: the leaf certificate's key is not Ed25519") from None
        if eng.ed25519.public_key(self._signing) != leaf_pub:
            raise KeyError_("signing_key: does not match the leaf certificate's public key")
        if static_key is None:
            pub, sk = eng.x25519.generate_keypair()
            self._static = sk
        else:
            self._static = SecretBytes(static_key.view() if isinstance(static_key, SecretBytes) else static_key)
            if len(self._static) != 32:
                raise KeyError_("static_key: expected a 32-byte X25519 private key")
            pub = eng.x25519.public_key(self._static)
        self.static_public = pub
        # The provider's key objects, built once: a handshake then signs and does its static
        # DH without rebuilding either key (each rebuild is a scalar multiplication).
        self._signer = eng.ed25519.keyed(self._signing)
        self._static_keyed = eng.x25519.keyed(self._static)

    @classmethod
    def load(cls, cert: str | Path, key: str | Path, *, passphrase: bytes | None = None,
             static_key: str | Path | None = None, engine: Engine | None = None) -> Identity:
        """Load a PEM chain, a PKCS#8 Ed25519 key (optionally encrypted) and a static key file.

        The static key file holds the 32 raw bytes (``xps pki issue`` writes ``NAME.static``).
        """
        chain = load_certificates(_read(cert, "certificate"))
        raw = _read(key, "key")
        try:
            sk = serialization.load_pem_private_key(raw, password=passphrase)
        except TypeError:
            raise KeyError_("key: encrypted and no passphrase given (or a passphrase for a plain key)") from None
        except ValueError:
            raise KeyError_("key: not a PEM private key, or the passphrase is wrong") from None
        if not isinstance(sk, ed25519.Ed25519PrivateKey):
            raise KeyError_("key: not an Ed25519 private key")
        static = _read(static_key, "static key") if static_key is not None else None
        return cls(chain, bytearray(sk.private_bytes_raw()), static, engine=engine)

    @property
    def static_key(self) -> SecretBytes:
        """The static X25519 private key (the handshake copies it)."""
        return self._static

    def static_for(self, engine: Engine) -> KeyedExchange | SecretBytes:
        """The static key as ``engine`` should use it: held keyed if it is this identity's engine."""
        return self._static_keyed if engine is self._engine else self._static

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature with the leaf's key, through the engine (key object kept)."""
        return self._signer.sign(message)

    def wipe(self) -> None:
        """Wipe both private keys (and the keyed copies); the identity is unusable afterwards."""
        self._signing.wipe()
        self._static.wipe()
        self._signer.wipe()
        self._static_keyed.wipe()

    def __repr__(self) -> str:
        return f"<Identity {self.chain[0].subject.rfc4514_string()} (keys redacted)>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("Identity holds private keys and cannot be pickled")


class Trust:
    """CA certificates, CRLs and chain limits: what a peer's certificate is checked against.

    Args:
        cas: trusted CA certificates (trust anchors).
        crls: certificate revocation lists; each must be signed by the CA that issued it, and be
            a full CRL: a delta or scoped one, or one with an unknown critical extension, is
            refused here (PolicyError), since taken as complete it would un-revoke certificates.
        require_crl: fail a chain whose issuers have no CRL here (default: True when any CRL
            is given, so a revocation check cannot be skipped by forgetting one file).
        max_chain: the most certificates a peer may send (leaf included).
        engine: the engine verifying signatures.
    """

    __slots__ = ("_anchors", "_chains", "_crls", "_engine", "_verified", "max_chain", "require_crl")

    def __init__(self, cas: Iterable[x509.Certificate], crls: Iterable[x509.CertificateRevocationList] = (), *,
                 require_crl: bool | None = None, max_chain: int = 4, engine: Engine | None = None) -> None:
        self._anchors = _items(cas, x509.Certificate, "cas")
        if not self._anchors:
            raise PolicyError("trust: at least one CA certificate is needed")
        for cert in self._anchors:
            _check_anchor(cert)
        self._crls = _items(crls, x509.CertificateRevocationList, "crls")
        for crl in self._crls:
            _check_crl(crl)
        self.require_crl = bool(self._crls) if require_crl is None else bool(require_crl)
        if type(max_chain) is not int or not 1 <= max_chain <= 16:
            raise PolicyError("max_chain: expected an int in 1..16")
        self.max_chain = max_chain
        self._engine = _engine(engine)
        # SHA-256 of (issuer key, signed bytes, signature) for signatures that verified: a peer
        # presents the same intermediates and the CRLs do not change, so each is checked once.
        # Only successes are kept, bounded, and the key covers every input of the check.
        self._verified: dict[bytes, None] = {}
        # Chains that passed every check: digest -> what the time-dependent checks need.
        self._chains: dict[bytes, _CheckedChain] = {}

    @classmethod
    def load(cls, ca_files: Iterable[str | Path], crl_files: Iterable[str | Path] = (), *,
             require_crl: bool | None = None, max_chain: int = 4, engine: Engine | None = None) -> Trust:
        """A Trust from PEM/DER files."""
        cas = [c for f in ca_files for c in load_certificates(_read(f, "CA certificate"))]
        crls = [c for f in crl_files for c in load_crls(_read(f, "CRL"))]
        return cls(cas, crls, require_crl=require_crl, max_chain=max_chain, engine=engine)

    def verify(self, chain_der: Sequence[bytes], *, purpose: Purpose, expected_names: Iterable[str] | None,
               now: dt.datetime | None = None) -> PeerCertificate:
        """Verify a peer's chain (leaf first) for ``purpose``; see the module docstring for the steps.

        ``expected_names=None`` accepts any name (the server authorising clients by CA only).

        Raises:
            ChannelAuthError: with ``reason`` naming the failed check.
            PolicyError: an argument of the wrong type (a caller's error, not the peer's).
        """
        if purpose not in ("client", "server"):  # a tuple: an unhashable argument is no TypeError
            raise PolicyError("purpose: expected 'client' or 'server'")
        if not isinstance(chain_der, Sequence) or isinstance(chain_der, str | bytes | bytearray | memoryview):
            raise PolicyError("chain_der: expected a list of DER certificates, leaf first")
        for der in chain_der:
            if type(der) is not bytes:  # the handshake's own case is bytes; a caller's view is checked
                byte_buffer(der, "chain_der", PolicyError)
        expected_names = _expected(expected_names)
        if now is not None and (not isinstance(now, dt.datetime) or now.tzinfo is None):
            raise PolicyError("now: expected an aware datetime")
        when = now or dt.datetime.now(dt.UTC)
        digest = self._chain_digest(chain_der, purpose)
        checked = None if digest is None else self._chains.get(digest)
        if checked is not None:
            # Same bytes, same purpose, same Trust: only the clock and the caller's names can
            # change the outcome, checked in the order of the full verification below.
            for not_before, not_after in checked.validity:
                if when < not_before:
                    _fail("cert-not-yet-valid", "a certificate on the path is not valid yet")
                if when > not_after:
                    _fail("cert-expired", "a certificate on the path has expired")
            self.check_name(checked.peer.names, expected_names)
            for last_update, next_update in checked.crl_windows:
                if next_update is None or when > next_update:
                    _fail("crl-expired", "the issuer's CRL has expired")
                if when < last_update:
                    _fail("crl-not-yet-valid", "the issuer's CRL is not valid yet")
            return checked.peer
        chain = self.check_shape(chain_der)
        path, anchor = self.check_path(chain)
        full = (*path, anchor)
        self.check_validity(full, when)
        self.check_ca_constraints(full)
        self.check_leaf_usage(path[0], purpose)
        names = _san_names(path[0])
        self.check_name(names, expected_names)
        windows = self.check_revocation(full, when)
        peer = PeerCertificate(path[0], full, names)
        if digest is not None:
            if len(self._chains) >= _MAX_CHAINS:
                self._chains.clear()
            self._chains[digest] = _CheckedChain(
                peer, tuple((c.not_valid_before_utc, c.not_valid_after_utc) for c in full), windows)
        return peer

    def _chain_digest(self, chain_der: Sequence[bytes], purpose: Purpose) -> bytes | None:
        """The cache key of a chain, or None for anything the full checks must refuse first."""
        if not isinstance(chain_der, list | tuple) or not 1 <= len(chain_der) <= self.max_chain:
            return None
        h = hashlib.sha256(b"chain|" + purpose.encode() + b"|" + (b"1" if self.require_crl else b"0"))
        for der in chain_der:
            if type(der) is not bytes or len(der) > MAX_CERT_DER:
                return None
            h.update(len(der).to_bytes(4, "big"))
            h.update(der)
        return h.digest()

    # -- the steps ---------------------------------------------------------------------

    def check_shape(self, chain_der: Sequence[bytes]) -> list[x509.Certificate]:
        """Count, size and parse each certificate; Ed25519 keys and signatures only."""
        if not 1 <= len(chain_der) <= self.max_chain:
            _fail("chain-too-long" if chain_der else "cert-missing",
                  f"chain of {len(chain_der)} certificates (1..{self.max_chain} allowed)")
        certs = []
        for der in chain_der:
            if len(der) > MAX_CERT_DER:
                _fail("cert-malformed", f"a certificate is larger than {MAX_CERT_DER} bytes")
            try:
                cert = x509.load_der_x509_certificate(bytes(der))
                _ed25519_raw(cert)
                algo = cert.signature_algorithm_oid
                # cryptography parses names, extensions and times on first access: read every
                # field the later steps use now, so a malformed one fails here, typed, and not
                # as a bare ValueError halfway through the path or name checks.
                _ = (cert.issuer, cert.subject, cert.extensions, cert.serial_number, cert.not_valid_before_utc,
                     cert.not_valid_after_utc, cert.tbs_certificate_bytes, cert.signature)
            except _PARSE_ERRORS:
                _fail("cert-malformed", "a certificate does not parse")
            if algo != SignatureAlgorithmOID.ED25519:
                _fail("cert-key-type", "a certificate is not signed with Ed25519")
            certs.append(cert)
        return certs

    def check_path(self, chain: list[x509.Certificate]) -> tuple[tuple[x509.Certificate, ...], x509.Certificate]:
        """Each certificate signed by the next; the last one by (or identical to) a trust anchor."""
        for child, parent in itertools.pairwise(chain):
            if child.issuer != parent.subject or not self._signed_by(child, parent):
                _fail("cert-untrusted", "the chain is not in order or a signature does not verify")
        last = chain[-1]
        for anchor in self._anchors:
            if last == anchor and len(chain) > 1:
                return tuple(chain[:-1]), anchor
            if last.issuer == anchor.subject and self._signed_by(last, anchor):
                return tuple(chain), anchor
        _fail("cert-untrusted", "not issued by a trusted CA")

    def check_validity(self, path: Sequence[x509.Certificate], now: dt.datetime) -> None:
        """Every certificate on the path, the anchor included, valid at ``now``."""
        for cert in path:
            if now < cert.not_valid_before_utc:
                _fail("cert-not-yet-valid", "a certificate on the path is not valid yet")
            if now > cert.not_valid_after_utc:
                _fail("cert-expired", "a certificate on the path has expired")

    def check_ca_constraints(self, path: Sequence[x509.Certificate]) -> None:
        """Issuers are CAs allowed to sign certificates, within their path length and name
        constraints; no unknown critical extension."""
        for cert in path:
            for ext in cert.extensions:
                if ext.critical and ext.oid not in _KNOWN_CRITICAL:
                    _fail("cert-extension", "a certificate has an unknown critical extension")
        for depth, cert in enumerate(path[1:]):
            bc = _ext(cert, x509.BasicConstraints)
            ku = _ext(cert, x509.KeyUsage)
            if bc is None or not bc.ca or ku is None or not ku.key_cert_sign:
                _fail("cert-usage", "an issuer is not a CA allowed to sign certificates")
            # ``depth`` CA certificates lie between this one and the leaf.
            if bc.path_length is not None and depth > bc.path_length:
                _fail("chain-too-long", "a CA's path length constraint is exceeded")
            # RFC 5280 6.1.3-6.1.4: a CA's name constraints bind every certificate below it,
            # whether or not the extension is marked critical.
            nc = _ext(cert, x509.NameConstraints)
            if nc is not None:
                _check_name_constraints(nc, path[:depth + 1])

    def check_leaf_usage(self, leaf: x509.Certificate, purpose: Purpose) -> None:
        """The leaf is an end entity allowed to sign, for this role."""
        bc = _ext(leaf, x509.BasicConstraints)
        if bc is not None and bc.ca:
            _fail("cert-usage", "the peer's certificate is a CA certificate")
        ku = _ext(leaf, x509.KeyUsage)
        if ku is None or not ku.digital_signature:
            _fail("cert-usage", "the peer's certificate does not allow digitalSignature")
        eku = _ext(leaf, x509.ExtendedKeyUsage)
        if eku is not None and _EKU[purpose] not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            _fail("cert-usage", f"the peer's certificate is not for {purpose} authentication")

    @staticmethod
    def check_name(names: tuple[str, ...], expected: Iterable[str] | None) -> None:
        """One expected name among the leaf's SANs (DNS case-insensitive, URI exact).

        A name with ``://`` is a URI and matches URI SANs only, any other a DNS SAN only
        (:func:`_san_names` keeps each type on its side of that line); ASCII only.
        """
        expected = _expected(expected)
        if expected is None:
            return
        wanted = {_norm(n) for n in expected}
        if not wanted & {_norm(n) for n in names if _printable_ascii(n)}:
            _fail("cert-name", "the peer's certificate does not carry the expected name")

    def check_revocation(self, path: Sequence[x509.Certificate], now: dt.datetime
                         ) -> tuple[tuple[dt.datetime, dt.datetime | None], ...]:
        """Each issued certificate against a current CRL of its issuer.

        Returns the (last update, next update) of each CRL consulted, in path order.
        """
        windows: list[tuple[dt.datetime, dt.datetime | None]] = []
        if not self.require_crl and not self._crls:
            return ()
        for cert, issuer in itertools.pairwise(path):
            crls = [c for c in self._crls if c.issuer == issuer.subject]
            good = [c for c in crls if self._crl_signed_by(c, issuer)]
            if not good:
                if self.require_crl:
                    _fail("crl-missing", "no CRL signed by an issuer on the path")
                continue
            crl = max(good, key=lambda c: c.last_update_utc)
            windows.append((crl.last_update_utc, crl.next_update_utc))
            if crl.next_update_utc is None or now > crl.next_update_utc:
                _fail("crl-expired", "the issuer's CRL has expired")
            if now < crl.last_update_utc:
                _fail("crl-not-yet-valid", "the issuer's CRL is not valid yet")
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                _fail("cert-revoked", "a certificate on the path is revoked")
        return tuple(windows)

    # -- signatures through the engine -------------------------------------------------

    def _signed_by(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        if cert.signature_algorithm_oid != SignatureAlgorithmOID.ED25519:
            return False
        return self._verify(_ed25519_raw(issuer), cert.tbs_certificate_bytes, cert.signature)

    def _crl_signed_by(self, crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
        if crl.signature_algorithm_oid != SignatureAlgorithmOID.ED25519:
            return False
        return self._verify(_ed25519_raw(issuer), crl.tbs_certlist_bytes, crl.signature)

    def _verify(self, public_key: bytes, signed: bytes, signature: bytes) -> bool:
        h = hashlib.sha256()
        for part in (public_key, signed, signature):
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        key = h.digest()
        if key in self._verified:
            return True
        try:
            self._engine.ed25519.verify(public_key, signed, signature)
        except AuthError:
            return False
        if len(self._verified) >= _MAX_VERIFIED:
            self._verified.clear()
        self._verified[key] = None
        return True


@dataclass(frozen=True, slots=True)
class _CheckedChain:
    """A chain that passed every check, and the time-dependent facts to check again."""

    peer: PeerCertificate
    validity: tuple[tuple[dt.datetime, dt.datetime], ...]
    crl_windows: tuple[tuple[dt.datetime, dt.datetime | None], ...]


def _ext(cert: x509.Certificate, kind: type[E]) -> E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except _PARSE_ERRORS:  # a duplicated or malformed extension
        _fail("cert-malformed", "a certificate has a malformed extension")


def _check_name_constraints(nc: x509.NameConstraints, below: Sequence[x509.Certificate]) -> None:
    """Every DNS, URI and IP SAN of ``below`` (the certificates a CA issued, down to the leaf)
    inside ``nc``'s permitted subtrees of its type, if it has any, and outside its excluded ones.

    A subtree of a type not enforced here fails the chain (``cert-extension``); a name these
    rules cannot place (a URI without a host name, a DNS name that is not ASCII) counts as
    outside every permitted subtree and inside every excluded one (``cert-name``).
    """
    subtrees = [*(nc.permitted_subtrees or ()), *(nc.excluded_subtrees or ())]
    if not all(isinstance(t, _CONSTRAINED_TYPES) for t in subtrees):
        _fail("cert-extension", "a CA's name constraints use a name type not supported here")
    for cert in below:
        san = _ext(cert, x509.SubjectAlternativeName)
        for name in san or ():
            if not isinstance(name, _CONSTRAINED_TYPES):
                continue  # no constraint of its type exists (checked above)
            permitted = [t for t in nc.permitted_subtrees or () if type(t) is type(name)]
            excluded = [t for t in nc.excluded_subtrees or () if type(t) is type(name)]
            if (permitted and not any(_within(name, t, permitted=True) for t in permitted)) or any(
                    _within(name, t, permitted=False) for t in excluded):
                _fail("cert-name", "a certificate name is outside a CA's name constraints")


def _within(name: x509.GeneralName, subtree: x509.GeneralName, *, permitted: bool) -> bool:
    """Whether ``name`` falls in ``subtree`` (same type), reading any doubt the strict way:
    an unplaceable name is in no permitted subtree and in every excluded one."""
    if isinstance(name, x509.IPAddress) and isinstance(subtree, x509.IPAddress):
        net, addr = subtree.value, name.value
        return (isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network)
                and isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address)
                and addr.version == net.version and addr in net)
    if isinstance(name, x509.DNSName):
        host: str | None = name.value
        # A DNS constraint "a.test" covers a.test and its subdomains (RFC 5280 4.2.1.10).
        exact_host_only = False
    else:
        host = _uri_host(str(name.value))
        # For URIs "a.test" names that host only, ".a.test" its subdomains; an excluded one is
        # read as covering both, the side that refuses more.
        exact_host_only = permitted
    if host is None or not _printable_ascii(host):
        return not permitted
    return _domain_within(host.lower().rstrip("."), str(subtree.value).lower().rstrip("."), exact_host_only)


def _domain_within(host: str, constraint: str, exact_host_only: bool) -> bool:
    if not constraint:
        return True  # an empty constraint covers every name of its type
    if constraint.startswith("."):
        return host.endswith(constraint)
    return host == constraint or (not exact_host_only and host.endswith("." + constraint))


def _uri_host(uri: str) -> str | None:
    """The host name of a URI, or None without one (no authority, or an IP literal: RFC 5280
    4.2.1.10 has such URIs refused where constraints apply)."""
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


def _san_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The leaf's DNS and URI SANs that can match an expected name.

    An expected name is a URI when it holds ``://`` and a DNS name otherwise (:func:`_norm`), so
    a DNS SAN spelled like a URI, or a URI SAN without ``://``, is left out: neither may stand in
    for a name of the other type. So is a SAN that is not printable ASCII: IA5String allows no
    more, and case folding beyond ASCII maps other names onto ours (U+212A KELVIN SIGN lowers to
    "k"); internationalised names are compared in their IDNA ``xn--`` form.
    """
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is None:
        return ()
    dns = [n for n in san.get_values_for_type(x509.DNSName) if _printable_ascii(n) and "://" not in n]
    uris = [n for n in san.get_values_for_type(x509.UniformResourceIdentifier) if _printable_ascii(n) and "://" in n]
    return (*dns, *uris)


def _printable_ascii(name: str) -> bool:
    return name.isascii() and name.isprintable() and bool(name)


def _norm(name: str) -> str:
    # ASCII only by the time it gets here (_san_names, _expected): lower() folds A-Z and nothing else.
    return name if "://" in name else name.lower().rstrip(".")


def _expected(expected: Iterable[str] | None) -> tuple[str, ...] | None:
    """The caller's expected names, checked: str each, printable ASCII (IDNA ``xn--`` for others)."""
    if expected is None:
        return None
    names = (expected,) if isinstance(expected, str) else expected
    try:
        out = tuple(names)
    except (TypeError, ValueError):  # not iterable, or a released memoryview
        raise PolicyError("expected_names: expected a list of DNS or URI names") from None
    for name in out:
        if not isinstance(name, str) or not _printable_ascii(name):
            raise PolicyError("expected_names: each name must be a non-empty printable ASCII str "
                              "(internationalised names in their xn-- form)")
    return out


def _items(values: Iterable[object], kind: type[T], field: str) -> tuple[T, ...]:
    """``values`` as a tuple of ``kind``, else PolicyError naming ``field``."""
    if isinstance(values, str | bytes | bytearray | memoryview):
        raise PolicyError(f"{field}: expected a list of {kind.__name__}")
    try:
        out = tuple(values)
    except (TypeError, ValueError):  # not iterable, or a released memoryview
        raise PolicyError(f"{field}: expected a list of {kind.__name__}") from None
    if not all(isinstance(v, kind) for v in out):
        raise PolicyError(f"{field}: expected a list of {kind.__name__}")
    return out  # type: ignore[return-value]


def _check_anchor(cert: x509.Certificate) -> None:
    """Parse what the path checks read from a trust anchor now: a broken CA file fails here, once."""
    try:
        _ = (cert.issuer, cert.subject, cert.extensions, cert.not_valid_before_utc, cert.not_valid_after_utc)
    except _PARSE_ERRORS:
        raise PolicyError("cas: a CA certificate does not parse") from None


def _check_crl(crl: x509.CertificateRevocationList) -> None:
    """A CRL the revocation check may take as its issuer's complete list, else PolicyError.

    Every lazily parsed field is read here (so a malformed CRL fails at load, not mid-handshake);
    a delta or scoped CRL, or one with a critical extension (of the CRL or of an entry) not
    understood here, is refused (RFC 5280 5.2, 5.3: such a CRL must not be used as a full one).
    """
    try:
        _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.tbs_certlist_bytes, crl.signature,
             crl.signature_algorithm_oid)
        exts = list(crl.extensions)
        entry_exts = [ext for entry in crl for ext in entry.extensions]
        _ = [entry.serial_number for entry in crl]
    except _PARSE_ERRORS:
        raise PolicyError("crls: a CRL does not parse") from None
    for ext in exts:
        if ext.oid in _PARTIAL_CRL:
            raise PolicyError("crls: a delta or scoped CRL (DeltaCRLIndicator, IssuingDistributionPoint) "
                              "cannot stand in for the issuer's full CRL")
        if ext.critical and ext.oid not in _KNOWN_CRL_CRITICAL:
            raise PolicyError("crls: a CRL has an unknown critical extension")
    if any(ext.critical for ext in entry_exts):
        # The only critical entry extension RFC 5280 defines is CertificateIssuer, which belongs
        # to indirect CRLs: they name certificates of other issuers, which this check cannot tell.
        raise PolicyError("crls: a CRL entry has a critical extension (an indirect CRL)")
