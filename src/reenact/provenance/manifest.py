"""Signed C2PA manifest and MP4 metadata tags: the hard-bound layer of the marks.

`sign_mp4` writes a copy of a finished MP4 with (1) metadata tags saying the file
is synthetic and made by reenact and (2) an embedded C2PA manifest signed with
c2pa-python: a `c2pa.created` action whose digitalSourceType is
trainedAlgorithmicMedia, a `c2pa.soft-binding` assertion naming the watermark
algorithm and its payload (so the manifest and the watermarks point at each
other), and an `org.reenact.synthetic` assertion with the consent record's
hash and the settings (e.g. whether the visible label was switched off). No
ingredient and no thumbnail is embedded, so no picture of the person is stored.

Signing credentials: a local ES256 key and certificate chain (leaf + a private
root) are made on first use in `$REENACT_C2PA_DIR`, else
`$XDG_CONFIG_HOME/reenact/c2pa` (`~/.config/reenact/c2pa`). Give your own with
`$REENACT_C2PA_CERT` and `$REENACT_C2PA_KEY` (PEM chain and PKCS#8 key) or the
`Credentials` argument. Self-made certificates are not on any trust list, so
other readers report the manifest as valid but untrusted; `verify` trusts the
local root.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from reenact.errors import ReenactError
from reenact.files import atomic_write, temporary_path, write_bytes
from reenact.media.container import check_output_path
from reenact.provenance.payload import ALGORITHM, Payload

log = logging.getLogger(__name__)

CREATED = "c2pa.created"
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ASSERTION = "org.reenact.synthetic"
TAG_PREFIX = "----:org.reenact:"  # freeform MP4 tags (mutagen spelling)
DISCLOSURE = "AI-generated: synthetic video made by reenact"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("reenact")
    except Exception:  # noqa: BLE001 - not installed: running from a checkout
        return "0"


@dataclass(frozen=True)
class Credentials:
    """PEM certificate chain (leaf first) and PKCS#8 private key; `root` is trusted by verify."""

    cert: Path
    key: Path
    root: Path | None = None


@dataclass
class Claims:
    """What the manifest states beyond the fixed AI-generated declaration."""

    payload: Payload
    output_id: str = ""
    consent_sha256: str | None = None  # hash of the subject's consent record
    settings: dict = field(default_factory=dict)  # e.g. {"visible_label": False, "backend": "lia"}
    title: str | None = None


def credentials_dir() -> Path:
    if os.environ.get("REENACT_C2PA_DIR"):
        return Path(os.environ["REENACT_C2PA_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "reenact" / "c2pa"


def credentials(create: bool = True) -> Credentials:
    """The user's own credentials from the environment, else the local ones (made if missing)."""
    cert, key = os.environ.get("REENACT_C2PA_CERT"), os.environ.get("REENACT_C2PA_KEY")
    if cert or key:
        if not (cert and key):
            raise ReenactError("set both REENACT_C2PA_CERT and REENACT_C2PA_KEY, or neither")
        for p in (cert, key):
            if not Path(p).is_file():
                raise ReenactError("signing credential not found", p)
        return Credentials(Path(cert), Path(key), None)
    folder = credentials_dir()
    found = Credentials(folder / "cert.pem", folder / "key.pem", folder / "root.pem")
    if not (found.cert.exists() and found.key.exists()) and create:
        make_credentials(folder)
    return found


def make_credentials(folder: Path, days: int = 3650) -> Credentials:
    """Make a private P-256 root and an ES256 signing leaf in `folder` (key readable by the owner only)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)
    user = os.environ.get("USER") or "user"

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"reenact local signer ({user})")])

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(name("reenact local root")).issuer_name(name("reenact local root"))
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(name("reenact signer")).issuer_name(root.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    creds = Credentials(folder / "cert.pem", folder / "key.pem", folder / "root.pem")
    write_bytes(creds.key, leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
                mode=0o600)
    write_bytes(creds.cert, leaf.public_bytes(pem) + root.public_bytes(pem))
    write_bytes(creds.root, root.public_bytes(pem))
    log.info("made a local C2PA signing key and certificate in %s", folder)
    return creds


def manifest_definition(claims: Claims) -> dict:
    """The C2PA manifest (as c2pa-python's Builder takes it) for the claims."""
    agent = {"name": "reenact", "version": _version()}
    payload = claims.payload
    return {
        "claim_generator_info": [agent],
        "title": claims.title or "synthetic video",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [
                {"action": CREATED, "digitalSourceType": TRAINED, "softwareAgent": agent,
                 "description": "Synthetic talking-head video: a portrait animated by a driver video's motion"}]}},
            {"label": "c2pa.soft-binding", "data": {
                "alg": ALGORITHM,
                "blocks": [{"scope": {}, "value": base64.b64encode(payload.value.to_bytes(8, "big")).decode()}]}},
            {"label": ASSERTION, "data": {
                "synthetic": True,
                "payload": payload.hex(),
                "output_id": claims.output_id,
                "consent_sha256": claims.consent_sha256,
                "settings": claims.settings,
                "watermarks": {"video": f"{ALGORITHM}/video", "audio": f"{ALGORITHM}/audio"},
            }},
        ],
    }


def metadata_tags(claims: Claims) -> dict[str, str]:
    """Tags written into the MP4 (freeform keys under org.reenact, plus the standard comment and tool)."""
    return {
        "synthetic": "true",
        "generator": f"reenact {_version()}",
        "digital_source_type": TRAINED,
        "payload": claims.payload.hex(),
        "output_id": claims.output_id,
        "visible_label": str(claims.settings.get("visible_label", True)).lower(),
    }


def write_metadata(path: Path, claims: Claims) -> None:
    """Write the tags into an MP4 in place (the caller works on a temporary copy)."""
    from mutagen.mp4 import MP4, MP4FreeForm

    mp4 = MP4(str(path))
    if mp4.tags is None:
        mp4.add_tags()
    mp4.tags["\xa9cmt"] = [DISCLOSURE]
    mp4.tags["\xa9too"] = [f"reenact {_version()}"]
    for key, value in metadata_tags(claims).items():
        mp4.tags[TAG_PREFIX + key] = [MP4FreeForm(value.encode())]
    mp4.save()


def read_metadata(path: Path) -> dict[str, str]:
    """The reenact tags and standard comment/tool tags of an MP4 ({} when none or not an MP4)."""
    from mutagen import MutagenError
    from mutagen.mp4 import MP4

    try:
        tags = MP4(str(path)).tags or {}
    except (MutagenError, ValueError):
        return {}
    out = {}
    for key, values in tags.items():
        if key.startswith(TAG_PREFIX):
            out[key[len(TAG_PREFIX):]] = bytes(values[0]).decode(errors="replace")
        elif key in ("\xa9cmt", "\xa9too"):
            out["comment" if key == "\xa9cmt" else "tool"] = str(values[0])
    return out


def sign_mp4(in_path: str | Path, out_path: str | Path, claims: Claims, creds: Credentials | None = None) -> Path:
    """Write `out_path`: `in_path` with reenact's metadata tags and a signed C2PA manifest.

    Written atomically (temporary files beside `out_path`, then a rename);
    `in_path` is not changed and may be the same path as `out_path`.
    """
    import c2pa

    in_path, out_path = Path(in_path), check_output_path(out_path)
    if not in_path.is_file():
        raise ReenactError("file not found", in_path)
    creds = creds or credentials()
    tagged = temporary_path(out_path, "tagged")
    try:
        shutil.copyfile(in_path, tagged)
        write_metadata(tagged, claims)
        info = c2pa.C2paSignerInfo(alg=c2pa.C2paSigningAlg.ES256, sign_cert=creds.cert.read_bytes(),
                                   private_key=creds.key.read_bytes(), ta_url=None)
        settings = {"builder": {"thumbnail": {"enabled": False}}}
        with c2pa.Signer.from_info(info) as signer, c2pa.Context.from_dict(settings) as ctx, \
                c2pa.Builder(manifest_definition(claims), ctx) as builder:
            with atomic_write(out_path) as signed:
                builder.sign_file(str(tagged), str(signed), signer)
    except c2pa.C2paError as exc:
        raise ReenactError(f"C2PA signing failed ({exc})", in_path) from None
    finally:
        tagged.unlink(missing_ok=True)
    return out_path


def read_manifest(path: str | Path, trust: Path | None = None) -> dict:
    """The manifest layer of a file: state valid/invalid/absent, trust, failures and claims."""
    import c2pa

    path = Path(path)
    if trust is None:
        local = credentials(create=False)
        trust = local.root if local.root and local.root.exists() else None
    settings = {"verify": {"verify_trust": True}}
    if trust is not None:
        settings["trust"] = {"trust_anchors": trust.read_text()}
    try:
        with c2pa.Context.from_dict(settings) as ctx, c2pa.Reader(str(path), context=ctx) as reader:
            state = reader.get_validation_state()
            results = reader.get_validation_results() or {}
            store = json.loads(reader.json())
    except c2pa.C2paError as exc:
        text = str(exc)
        if "NotFound" in type(exc).__name__ or "ManifestNotFound" in text:
            return {"state": "absent"}
        if "NotSupported" in type(exc).__name__ or "NotSupported" in text:
            return {"state": "absent", "note": f"C2PA does not cover this format ({path.suffix or 'no suffix'})"}
        return {"state": "invalid", "error": text}
    active = store.get("manifests", {}).get(store.get("active_manifest"), {})
    failures = [f.get("code") for f in (results.get("activeManifest", {}) or {}).get("failure", [])]
    assertions = {a.get("label"): a.get("data") for a in active.get("assertions", [])}
    actions = (assertions.get("c2pa.actions") or assertions.get("c2pa.actions.v2") or {}).get("actions", [])
    generator = [g.get("name") for g in active.get("claim_generator_info", [])]
    valid = str(state).lower() in ("valid", "trusted")
    untrusted_only = all(str(f).startswith("signingCredential.untrusted") for f in failures)
    return {
        "state": "valid" if valid or (failures and untrusted_only) else "invalid",
        "trusted": str(state).lower() == "trusted",
        "validation_state": str(state),
        "failures": failures,
        "generator": generator,
        "reenact": "reenact" in generator,
        "created": any(a.get("action") == CREATED for a in actions),
        "digital_source_type": next((a.get("digitalSourceType") for a in actions if a.get("action") == CREATED), None),
        "soft_binding": assertions.get("c2pa.soft-binding"),
        "claims": assertions.get(ASSERTION),
        "thumbnail": bool(active.get("thumbnail")),
    }
