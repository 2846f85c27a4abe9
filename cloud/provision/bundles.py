"""Provisioning: a principal's broker credential and the config that uses it, kept consistent.

A principal is a device (its username IS its device id, so the broker's one ACL pattern
`edgewatch/v1/%u/...` confines it to its own topics), the aggregator or the alerts viewer. For
each, `provision` writes a bundle directory to copy to the host that uses it:

    device      <out>/<id>/agent.toml, ca.crt [, client.crt, client.key]
    aggregator  <out>/aggregator/cloud.toml, ca.crt
    viewer      <out>/viewer/broker.url, ca.crt

and adds the password's hash to mosquitto's password file. The hash is computed here, in
mosquitto 2's own PBKDF2-SHA512 format, so the cloud host needs no mosquitto tools (the broker may
run in a container). With client certificates the certificate is the credential: it is signed by
the private CA (deploy/make-ca.sh) with the device id as CN, and rotating it revokes the old one.

Running it again changes nothing; `rotate=True` issues a new secret and rewrites only the secret
in the bundle (tomlkit edits the file in place), so an operator's edits and comments survive.
The broker must re-read its files afterwards (`systemctl reload mosquitto`): the result says when.

Errors: everything expected raises `ProvisionError` with a message meant for the operator; the
CLI prints it. OSError and openssl failures are translated here.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import os
import secrets
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Final
from urllib.parse import quote

import tomlkit
from tomlkit import aot, comment, nl, table
from tomlkit.exceptions import TOMLKitError

from devices.broker import BrokerURL, BrokerURLError, parse_broker_url
from devices.errors import EdgewatchError, InvalidDeviceId
from devices.model import check_device_id


class ProvisionError(EdgewatchError):
    """Provisioning cannot go on; the message says what to fix (or which flag to add)."""


class Role(StrEnum):
    DEVICE = "device"
    AGGREGATOR = "aggregator"
    VIEWER = "viewer"


# The role usernames the ACL's `user` blocks name; no device may take one (it would BE that role).
ROLE_USERS: Final = {Role.AGGREGATOR: "aggregator", Role.VIEWER: "viewer"}

# What deploy/mosquitto/acl must grant for provisioned credentials to work.
DEVICE_ACL_RULES: Final = (
    "pattern write edgewatch/v1/%u/telemetry",
    "pattern write edgewatch/v1/%u/backfill",
    "pattern write edgewatch/v1/%u/status",
    "pattern read edgewatch/v1/%u/ack",
)

# mosquitto 2 `$7$` hashes: PBKDF2-HMAC-SHA512, 101 iterations (its default), 12-byte salt.
PBKDF2_ITERATIONS: Final = 101
SALT_BYTES: Final = 12
SECRET_BYTES: Final = 24  # 32 URL-safe characters: fits in a URL without escaping
CERT_DAYS: Final = 825

DEFAULT_BROKER_DIR: Final = Path("/etc/mosquitto/edgewatch")
DEFAULT_INSTALL_DIRS: Final = {
    Role.DEVICE: PurePosixPath("/etc/edgewatch"),
    Role.AGGREGATOR: PurePosixPath("/etc/edgewatch-cloud"),
    Role.VIEWER: PurePosixPath("/etc/edgewatch"),
}
DEFAULT_DEVICE_STATE_DIR: Final = PurePosixPath("/var/lib/edgewatch")
DEFAULT_CLOUD_DB: Final = PurePosixPath("/var/lib/edgewatch-cloud/cloud.db")

CONFIG_FILES: Final = {Role.DEVICE: "agent.toml", Role.AGGREGATOR: "cloud.toml", Role.VIEWER: "broker.url"}


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    """What one run did. `changes` is empty when everything was already in place."""

    name: str
    role: Role
    bundle: Path
    config: Path
    changes: tuple[str, ...]
    reload_broker: bool  # the password file or the CRL changed: the broker must re-read them

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "bundle": str(self.bundle),
            "config": str(self.config),
            "changes": list(self.changes),
            "reload_broker": self.reload_broker,
        }


# -- mosquitto password file ------------------------------------------------------------------


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A mosquitto 2 password-file hash (`$7$101$salt$hash`), as `mosquitto_passwd` writes it."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """True if `hashed` (mosquitto `$7$` PBKDF2 or older `$6$` SHA512) matches `password`."""
    parts = hashed.split("$")
    if parts[0]:
        return False
    try:
        if len(parts) == 5 and parts[1] == "7":
            salt, want = base64.b64decode(parts[3]), base64.b64decode(parts[4])
            got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(want))
        elif len(parts) == 4 and parts[1] == "6":
            salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            got = hashlib.sha512(password.encode() + salt).digest()
        else:
            return False
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def read_passwd(path: Path) -> dict[str, str]:
    """username -> hash; a missing file is an empty one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ProvisionError(f"cannot read password file {path}: {exc}") from exc
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            user, hashed = line.split(":", 1)
            entries[user] = hashed.strip()
    return entries


def _set_passwd_entry(path: Path, user: str, hashed: str) -> None:
    """Replace or append one user's line, keeping every other line and the file's owner/mode."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as exc:
        raise ProvisionError(f"cannot read password file {path}: {exc}") from exc
    out: list[str] = []
    replaced = False
    for line in lines:
        if not line.lstrip().startswith("#") and line.split(":", 1)[0] == user:
            if not replaced:
                out.append(f"{user}:{hashed}")
                replaced = True
            continue
        out.append(line)
    if not replaced:
        out.append(f"{user}:{hashed}")
    # 0640: mosquitto re-reads the file as its own user on reload (chgrp mosquitto once).
    _write_atomic(path, "\n".join(out) + "\n", mode=0o640, keep_owner=True)


def check_acl(path: Path, role: Role) -> None:
    """Refuse to hand out a credential the broker's ACL would not let do its job."""
    try:
        lines = {" ".join(line.split()) for line in path.read_text(encoding="utf-8").splitlines()}
    except FileNotFoundError as exc:
        raise ProvisionError(
            f"ACL file {path} not found: install deploy/mosquitto/acl there (or pass --acl)"
        ) from exc
    except OSError as exc:
        raise ProvisionError(f"cannot read ACL file {path}: {exc}") from exc
    needed = DEVICE_ACL_RULES if role is Role.DEVICE else (f"user {ROLE_USERS[role]}",)
    missing = [rule for rule in needed if rule not in lines]
    if missing:
        raise ProvisionError(
            f"ACL file {path} lacks {missing[0]!r}: install deploy/mosquitto/acl (one pattern "
            "serves every device)"
        )


# -- files ------------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str | bytes, *, mode: int, keep_owner: bool = False) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    data = text.encode() if isinstance(text, str) else text
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.stat() if keep_owner and path.exists() else None
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            Path(tmp).chmod(old.st_mode & 0o7777 if old else mode)
            if old and os.geteuid() == 0:
                os.chown(tmp, old.st_uid, old.st_gid)
            Path(tmp).replace(path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp).unlink()
            raise
    except OSError as exc:
        raise ProvisionError(f"cannot write {path}: {exc}") from exc


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One provisioning at a time per broker directory (two would lose each other's lines)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise ProvisionError(f"cannot open {directory}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _copy_if_changed(src: Path, dst: Path) -> bool:
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise ProvisionError(f"cannot read {src}: {exc}") from exc
    if dst.exists() and dst.read_bytes() == data:
        return False
    _write_atomic(dst, data, mode=0o644)
    return True


# -- secrets in bundle files ------------------------------------------------------------------


def _read_secret(role: Role, config: Path) -> str | None:
    """The password a bundle's config holds, or None if there is no config yet."""
    if not config.exists():
        return None
    try:
        text = config.read_text(encoding="utf-8")
        if role is Role.VIEWER:
            return parse_broker_url(text.strip()).password
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, BrokerURLError) as exc:
        raise ProvisionError(f"cannot read the existing {config}: {exc}") from exc
    if role is Role.DEVICE:
        broker = data.get("broker", {})
        password = broker.get("password") if isinstance(broker, dict) else None
        return password if isinstance(password, str) else None
    section = data.get("aggregator", {})
    url = section.get("broker") if isinstance(section, dict) else None
    try:
        return parse_broker_url(url).password if isinstance(url, str) else None
    except BrokerURLError as exc:
        raise ProvisionError(f"{config}: aggregator.broker: {exc}") from exc


def _url_with_credentials(url: BrokerURL, user: str, password: str) -> str:
    scheme = "mqtts" if url.tls else "mqtt"
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{url.host}:{url.port}"


def _rotate_secret(role: Role, user: str, config: Path, new: str) -> None:
    """Set the new secret in the bundle's config through tomlkit, which keeps everything else of
    the file as it was: an operator's edits, comments and layout survive a rotation."""
    try:
        text = config.read_text(encoding="utf-8")
        if role is Role.VIEWER:  # one URL line, nothing else to keep
            _write_atomic(config, _url_with_credentials(parse_broker_url(text.strip()), user, new) + "\n",
                          mode=0o600, keep_owner=True)  # fmt: skip
            return
        doc = tomlkit.parse(text)
        if role is Role.DEVICE:
            broker = doc["broker"]
            assert isinstance(broker, MutableMapping)
            broker["password"] = new
        else:
            section = doc["aggregator"]
            assert isinstance(section, MutableMapping)
            section["broker"] = _url_with_credentials(parse_broker_url(str(section["broker"])), user, new)
    except (OSError, UnicodeDecodeError, TOMLKitError, BrokerURLError, KeyError, AssertionError) as exc:
        raise ProvisionError(f"cannot set the new secret in {config} ({exc}); rewrite it by hand") from exc
    _write_atomic(config, tomlkit.dumps(doc), mode=0o600, keep_owner=True)


def _device_config(
    device: str,
    url: BrokerURL,
    password: str | None,
    install_dir: PurePosixPath,
    state_dir: PurePosixPath,
    *,
    client_cert: bool,
) -> str:
    scheme = "mqtts" if url.tls else "mqtt"
    today = dt.datetime.now(dt.UTC).date().isoformat()
    doc = tomlkit.document()
    doc.add(
        comment(f"edgewatch agent config for device {device!r}, written by `edgewatch provision` on {today}.")
    )
    doc.add(
        comment(f"Install as {install_dir}/agent.toml (mode 0640, group edgewatch): it holds a credential.")
    )
    doc.add(nl())
    doc.add("device", table().add("id", device))
    doc.add(nl())
    broker = table().add("url", f"{scheme}://{url.host}:{url.port}")
    if client_cert:
        broker.add(comment("The client certificate is the credential; its CN is the device id."))
        broker.add("cert_file", str(install_dir / "client.crt"))
        broker.add("key_file", str(install_dir / "client.key"))
    else:
        broker.add("username", device)
        broker.add("password", password or "")
    if url.tls:
        broker.add("ca_file", str(install_dir / "ca.crt"))
    doc.add("broker", broker)
    doc.add(nl())
    outbox = table().add("path", str(state_dir / "outbox.db"))
    outbox.add(comment("max_bytes = 67108864"))
    outbox.add(comment('overflow = "drop_oldest"'))
    outbox.add(
        comment('synchronous = "FULL"   # also survives power cuts (SD cards), at about half the write rate')
    )
    doc.add("outbox", outbox)
    doc.add(nl())
    doc.add(
        comment("The host's own health; add your sensors below (`edgewatch agent sample` tries them once).")
    )
    host = table().add("name", "host").add("driver", "system").add("interval_s", 10.0)
    host.add(nl())
    for line in ("[[sensors]]", 'name = "air"', 'driver = "bme280"', "interval_s = 5.0",
                 "params = { bus = 1, address = 0x76 }"):  # fmt: skip
        host.add(comment(line))
    sensors = aot()
    sensors.append(host)
    doc.add("sensors", sensors)
    return tomlkit.dumps(doc)


def _role_config(
    role: Role,
    user: str,
    url: BrokerURL,
    password: str,
    *,
    install_dir: PurePosixPath,
    cloud_db: PurePosixPath,
) -> str:
    full = _url_with_credentials(url, user, password)
    if role is Role.VIEWER:
        return full + "\n"
    doc = tomlkit.document()
    doc.add(comment("edgewatch aggregator config, written by `edgewatch provision --role aggregator`."))
    doc.add(
        comment(f"Install as {install_dir}/cloud.toml (mode 0640, group edgewatch): it holds a credential.")
    )
    aggregator = table().add("broker", full)
    if url.tls:
        aggregator.add("ca_file", str(install_dir / "ca.crt"))
    aggregator.add("db", str(cloud_db))
    aggregator.add(nl())
    for line in ("Push alerts to people (README: Getting alerts to people):", "[[notify.sinks]]",
                 'name = "oncall"', 'type = "alertmanager"', 'url = "http://127.0.0.1:9093"'):  # fmt: skip
        aggregator.add(comment(line))
    doc.add("aggregator", aggregator)
    return tomlkit.dumps(doc)


# -- client certificates (openssl CLI) --------------------------------------------------------


def _openssl(*args: str, env: dict[str, str] | None = None) -> str:
    if shutil.which("openssl") is None:
        raise ProvisionError("client certificates need the openssl command (apt-get install openssl)")
    try:
        done = subprocess.run(
            ["openssl", *args],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **(env or {})},
        )
    except OSError as exc:
        raise ProvisionError(f"cannot run openssl: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ProvisionError(f"openssl {args[0]} failed: {detail[-1] if detail else done.returncode}")
    return done.stdout


def _cert_is_current(cert: Path, key: Path, ca_crt: Path, device: str) -> bool:
    """The bundle's certificate is ours to keep: signed by this CA, for this device, unexpired."""
    if not (cert.exists() and key.exists()):
        return False
    try:
        _openssl("verify", "-CAfile", str(ca_crt), str(cert))
        subject = _openssl("x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "RFC2253")
    except ProvisionError:
        return False
    return subject.strip() == f"subject=CN={device}"


def _issue_client_cert(ca_dir: Path, device: str, cert: Path, key: Path, days: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ext = work / "client.ext"
        ext.write_text(
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature\n"
            "extendedKeyUsage = clientAuth\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid\n"
        )
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(work / "k"))
        _openssl("req", "-new", "-key", str(work / "k"), "-subj", f"/CN={device}", "-out", str(work / "csr"))
        _openssl(
            "x509", "-req", "-in", str(work / "csr"),
            "-CA", str(ca_dir / "ca.crt"), "-CAkey", str(ca_dir / "ca.key"),
            "-set_serial", f"0x{secrets.token_hex(16)}", "-sha256", "-days", str(days),
            "-extfile", str(ext), "-out", str(work / "crt"),
        )  # fmt: skip
        _write_atomic(key, (work / "k").read_bytes(), mode=0o600)
        _write_atomic(cert, (work / "crt").read_bytes(), mode=0o644)


def _revoke(ca_dir: Path, cert: Path) -> None:
    """Revoke `cert` and re-sign the CRL the broker's certificate listener checks."""
    if not (ca_dir / "ca.cnf").exists():
        raise ProvisionError(f"{ca_dir} has no ca.cnf: re-run deploy/make-ca.sh --dir {ca_dir} to add one")
    env = {"EDGEWATCH_CA_DIR": str(ca_dir)}
    cnf = str(ca_dir / "ca.cnf")
    try:
        _openssl("ca", "-config", cnf, "-revoke", str(cert), env=env)
    except ProvisionError as exc:
        if "already revoked" not in str(exc).lower():
            raise
    crl = ca_dir / "crl.pem"
    tmp = ca_dir / ".crl.pem.new"
    _openssl("ca", "-config", cnf, "-gencrl", "-out", str(tmp), env=env)
    try:
        tmp.chmod(0o644)
        tmp.replace(crl)
    except OSError as exc:
        raise ProvisionError(f"cannot write {crl}: {exc}") from exc


# -- the one entry point ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    """One provisioning run's inputs, resolved and checked."""

    user: str
    role: Role
    url: BrokerURL
    passwd_file: Path
    ca_dir: Path
    bundle: Path
    config: Path
    install: PurePosixPath
    state_dir: PurePosixPath
    cloud_db: PurePosixPath
    rotate: bool
    cert_days: int

    def render(self, password: str | None, *, client_cert: bool = False) -> str:
        if self.role is Role.DEVICE:
            return _device_config(
                self.user, self.url, password, self.install, self.state_dir, client_cert=client_cert
            )
        return _role_config(
            self.role, self.user, self.url, password or "", install_dir=self.install, cloud_db=self.cloud_db
        )


def provision(
    name: str | None,
    *,
    role: Role = Role.DEVICE,
    broker_url: str,
    out_dir: Path | None = None,
    passwd_file: Path = DEFAULT_BROKER_DIR / "passwd",
    acl_file: Path | None = DEFAULT_BROKER_DIR / "acl",
    ca_dir: Path | None = None,
    client_cert: bool = False,
    rotate: bool = False,
    install_dir: PurePosixPath | None = None,
    state_dir: PurePosixPath = DEFAULT_DEVICE_STATE_DIR,
    cloud_db: PurePosixPath = DEFAULT_CLOUD_DB,
    cert_days: int = CERT_DAYS,
) -> ProvisionResult:
    """Create (or with `rotate`, replace) one principal's credential and write its bundle.

    `broker_url` is how the bundle's user reaches the broker, without credentials
    (`mqtts://broker.example.com:8883`; the client-certificate listener is on 8884).
    `install_dir` and `state_dir` are paths on the target host, written into its config.
    Bundles go to `out_dir/<name>/`, by default `bundles/` next to the password file: keeping
    them with the hashes is what lets a second run see that nothing needs doing.
    """
    user = _check_name(name, role)
    url = _check_url(broker_url, client_cert)
    if client_cert and role is not Role.DEVICE:
        raise ProvisionError("--client-cert is for devices; the aggregator and viewer use passwords")
    if cert_days <= 0:
        raise ProvisionError(f"certificate lifetime must be > 0 days, got {cert_days}")
    ca_dir = ca_dir or passwd_file.parent / "certs"
    if (url.tls or client_cert) and not (ca_dir / "ca.crt").exists():
        raise ProvisionError(
            f"no CA certificate at {ca_dir / 'ca.crt'}: create one with deploy/make-ca.sh --dir {ca_dir} "
            "(or pass --ca)"
        )
    if client_cert and not (ca_dir / "ca.key").exists():
        raise ProvisionError(f"signing a client certificate needs the CA key {ca_dir / 'ca.key'}")
    if acl_file is not None:
        check_acl(acl_file, role)
    if out_dir is None:
        out_dir = passwd_file.parent / "bundles"
    try:
        # Every bundle holds a credential. exist_ok: concurrent runs may race to create it.
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot create {out_dir}: {exc}") from exc
    bundle = out_dir / user
    job = _Job(
        user=user,
        role=role,
        url=url,
        passwd_file=passwd_file,
        ca_dir=ca_dir,
        bundle=bundle,
        config=bundle / CONFIG_FILES[role],
        install=install_dir or DEFAULT_INSTALL_DIRS[role],
        state_dir=state_dir,
        cloud_db=cloud_db,
        rotate=rotate,
        cert_days=cert_days,
    )
    changes: list[str] = []
    with _locked(passwd_file.parent):
        if url.tls and _copy_if_changed(ca_dir / "ca.crt", bundle / "ca.crt"):
            changes.append(f"copied {bundle / 'ca.crt'}")
        reload_broker = _provision_cert(job, changes) if client_cert else _provision_password(job, changes)
    return ProvisionResult(user, role, bundle, job.config, tuple(changes), reload_broker)


def _check_name(name: str | None, role: Role) -> str:
    if role is not Role.DEVICE:
        if name not in (None, ROLE_USERS[role]):
            raise ProvisionError(f"the {role} role's username is {ROLE_USERS[role]!r}, not {name!r}")
        return ROLE_USERS[role]
    if not name:
        raise ProvisionError("give the device id to provision")
    try:
        check_device_id(name)
    except InvalidDeviceId as exc:
        raise ProvisionError(str(exc)) from exc
    if name in ROLE_USERS.values():
        raise ProvisionError(f"device id {name!r} is the username of a broker role; choose another")
    return name


def _check_url(broker_url: str, client_cert: bool) -> BrokerURL:
    try:
        url = parse_broker_url(broker_url)
    except BrokerURLError as exc:
        raise ProvisionError(str(exc)) from exc
    if url.username or url.password:
        raise ProvisionError("give the broker URL without credentials: provisioning creates them")
    if client_cert and not url.tls:
        raise ProvisionError("client certificates need an mqtts:// broker URL (port 8884 in production.conf)")
    return url


def _provision_password(job: _Job, changes: list[str]) -> bool:
    """Returns True when the password file changed (the broker must reload)."""
    existing_hash = read_passwd(job.passwd_file).get(job.user)
    secret = _read_secret(job.role, job.config)
    if job.config.exists() and not secret:
        raise ProvisionError(f"{job.config} exists but holds no password for {job.user!r}; fix or remove it")
    if job.rotate:
        if not secret:
            raise ProvisionError(f"nothing to rotate: no {job.config} (provision {job.user!r} first)")
        new = secrets.token_urlsafe(SECRET_BYTES)
        _set_passwd_entry(job.passwd_file, job.user, hash_password(new))
        _rotate_secret(job.role, job.user, job.config, new)
        changes += [f"new password for {job.user} in {job.passwd_file}", f"wrote it to {job.config}"]
        return True
    if secret is None:
        if existing_hash is not None:
            raise ProvisionError(
                f"{job.user!r} already has a password in {job.passwd_file} but there is no "
                f"{job.config}; use --rotate to issue a new one (or --out the bundle's parent)"
            )
        secret = secrets.token_urlsafe(SECRET_BYTES)
        _write_atomic(job.config, job.render(secret), mode=0o600)
        changes.append(f"wrote {job.config}")
    if existing_hash is None:
        _set_passwd_entry(job.passwd_file, job.user, hash_password(secret))
        changes.append(f"added {job.user} to {job.passwd_file}")
        return True
    if not verify_password(secret, existing_hash):
        raise ProvisionError(
            f"{job.user}'s password in {job.passwd_file} does not match {job.config}; "
            "use --rotate to issue a new one"
        )
    return False


def _provision_cert(job: _Job, changes: list[str]) -> bool:
    """Returns True when the CRL changed (the broker must reload)."""
    cert, key = job.bundle / "client.crt", job.bundle / "client.key"
    current = _cert_is_current(cert, key, job.ca_dir / "ca.crt", job.user)
    if job.rotate:
        if not cert.exists():
            raise ProvisionError(f"nothing to rotate: no {cert} (provision {job.user!r} first)")
        _revoke(job.ca_dir, cert)
        changes.append(f"revoked the old certificate in {job.ca_dir / 'crl.pem'}")
    elif cert.exists() and not current:
        raise ProvisionError(
            f"{cert} is not a valid certificate for {job.user!r} from the CA in {job.ca_dir}; use --rotate"
        )
    if job.rotate or not current:
        _issue_client_cert(job.ca_dir, job.user, cert, key, job.cert_days)
        changes.append(f"issued {cert} (CN={job.user}, {job.cert_days} days)")
    if not job.config.exists():
        _write_atomic(job.config, job.render(None, client_cert=True), mode=0o600)
        changes.append(f"wrote {job.config}")
    return job.rotate
