"""The run store: where executed notebooks are written.

Local by default (``.stackbook/runs/<env>/<runbook>/<run_id>.ipynb``); any
papermill-supported URL (``s3://``, ``gs://``, ``abs://`` ...) when the
environment file's ``run_store`` or ``$STACKBOOK_RUN_STORE`` names one, in
which case papermill's I/O handlers do the writing. Local files are written
atomically and owner-only (``core.files.atomic_write_text``).

``check_writable`` runs before a run gets its ledger row: a store that cannot
be written is a ``UsageError`` (exit 2) with nothing executed or recorded,
rather than a run whose notebook is lost at the end. For ``s3://`` it asks the
bucket itself (HEAD bucket, then a marker object put and deleted), so a missing
bucket, refused access or an endpoint that does not answer is that error too.

S3 goes through papermill's S3 handler (boto3). The endpoint (an S3-compatible
server: MinIO, Ceph, moto in the tests) is the environment file's
``s3_endpoint``, else boto3's own ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``;
papermill keeps one boto3 session per process, so ``use_endpoint`` (called by
``check_writable`` and the readers given an endpoint) sets it for the process.
Credentials are boto3's: the environment, a profile, an instance role, never
the environment file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from stackbook.core import project
from stackbook.core.errors import UsageError
from stackbook.core.files import atomic_write_text, make_dirs

WHERE_SET = "`run_store` in the environment file or $STACKBOOK_RUN_STORE"
MARKER_NAME = ".stackbook-write-check"
#: the runner's variables a kernel gets when the run store is s3:// (runbooks that write there: dbt artifacts)
S3_KERNEL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                       "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_DEFAULT_REGION", "AWS_REGION",
                       "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE")
_session_endpoint: list[str | None] = []  # the endpoint papermill's S3 session was made for (one per process)


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def base(env_run_store: str | None = None) -> str:
    return os.environ.get("STACKBOOK_RUN_STORE") or env_run_store or project.run_store_root()


def location(env: str, runbook: str, run_id: str, env_run_store: str | None = None) -> str:
    root = base(env_run_store).rstrip("/")
    return f"{root}/{env}/{runbook}/{run_id}.ipynb"


def _local(loc: str) -> Path:
    return Path(loc.removeprefix("file://"))


def check_writable(loc: str, endpoint: str | None = None) -> None:
    """UsageError (exit 2) unless the notebook LOC can be written: a local folder that can be created and
    written, an s3:// bucket that exists and takes a marker object (at ENDPOINT, see ``endpoint_url``), or
    another URL scheme papermill has a handler for (its credentials are not tried here)."""
    if loc.startswith("s3://"):
        check_bucket(loc, endpoint)
        return
    if is_remote(loc):
        from papermill.iorw import LocalHandler, papermill_io  # heavy: only for remote stores

        if isinstance(papermill_io.get_handler(loc), LocalHandler):
            scheme = loc.split("://", 1)[0]
            raise UsageError(f"the run store {loc.rsplit('/', 3)[0]!r} uses {scheme}://, which papermill cannot "
                             f"write: use a local folder or an s3://, gs://, abs:// or adl:// URL ({WHERE_SET}); "
                             "nothing was executed")
        return
    folder = _local(loc).parent
    try:
        make_dirs(folder)  # 0700, like every folder stackbook makes for its owner's files
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"the run store folder {folder} cannot be written ({exc.strerror or exc}"
                         f"{': ' + str(exc.filename) if exc.filename else ''}): fix it or point {WHERE_SET} "
                         "elsewhere; nothing was executed") from None


def write_text(loc: str, text: str, endpoint: str | None = None) -> None:
    """TEXT to LOC; an s3:// LOC at ENDPOINT, or at the endpoint this process already uses."""
    if is_remote(loc):
        from papermill.iorw import papermill_io  # heavy: only for remote stores

        if loc.startswith("s3://"):
            use_endpoint(endpoint, keep=endpoint is None)
        papermill_io.write(text, loc)
        return
    atomic_write_text(_local(loc), text)


def read_notebook(loc: str, endpoint: str | None = None) -> dict:
    """The notebook at LOC; an s3:// object missing from its bucket is a FileNotFoundError, as a local file."""
    if loc.startswith("s3://"):
        return json.loads(read_bytes(loc, endpoint).decode("utf-8"))
    if is_remote(loc):
        from papermill.iorw import papermill_io

        return json.loads(papermill_io.read(loc))
    return json.loads(_local(loc).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- S3


def endpoint_url(env_endpoint: str | None = None) -> str | None:
    """The S3 endpoint: the environment file's ``s3_endpoint``, else ``$AWS_ENDPOINT_URL_S3`` or
    ``$AWS_ENDPOINT_URL`` (boto3's own), else papermill's ``$BOTO3_ENDPOINT_URL``; None means AWS itself."""
    return (env_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or os.environ.get("BOTO3_ENDPOINT_URL") or None)


def env_endpoint(env: str | None) -> str | None:
    """The ``s3_endpoint`` of environment ENV's file (None without one, or when the file is gone or broken:
    boto3's own endpoint then): where that environment's s3:// notebooks are, for readers of old runs."""
    from stackbook.core import environments
    from stackbook.core.errors import EnvironmentFileError

    try:
        return environments.load(env).get("s3_endpoint") if env else None
    except EnvironmentFileError:
        return None


def split(loc: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``."""
    bucket, _, key = loc.removeprefix("s3://").partition("/")
    return bucket, key


def use_endpoint(endpoint: str | None, keep: bool = False) -> None:
    """Make papermill's S3 handler (one boto3 session per process) talk to ENDPOINT (``endpoint_url``);
    KEEP: leave a session already made as it is."""
    from boto3.session import Session
    from papermill.s3 import S3

    url = endpoint_url(endpoint)
    with S3.lock:
        if _session_endpoint and (keep or _session_endpoint[0] == url):
            return
        session = Session()
        kwargs = {"endpoint_url": url} if url else {}
        S3.s3_session = (session, session.client("s3", **kwargs), session.resource("s3", **kwargs))
        _session_endpoint[:] = [url]


def client(endpoint: str | None = None):
    """The boto3 S3 client papermill's handler uses, at ENDPOINT (``use_endpoint``)."""
    from papermill.s3 import S3

    use_endpoint(endpoint, keep=endpoint is None)
    return S3.s3_session[1]


def read_bytes(loc: str, endpoint: str | None = None) -> bytes:
    """The stored bytes of the notebook LOC, exactly as written (``stackbook verify`` hashes them); an s3://
    object through papermill's boto3 client at ENDPOINT (``use_endpoint``), other remote schemes through
    papermill (their text, UTF-8). FileNotFoundError when gone; UsageError when the bucket refuses."""
    if loc.startswith("s3://"):
        return _s3_object(loc, endpoint)
    if is_remote(loc):
        from papermill.iorw import papermill_io

        return papermill_io.read(loc).encode("utf-8")
    return _local(loc).read_bytes()


def _s3_object(loc: str, endpoint: str | None) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split(loc)
    try:
        return client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = _code(exc)
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(loc) from None
        raise UsageError(f"the run store cannot read {loc} (S3 error {code}): check the AWS credentials and "
                         "endpoint (AWS_PROFILE, AWS_ENDPOINT_URL or the environment's s3_endpoint) of this shell"
                         ) from None
    except BotoCoreError as exc:
        raise UsageError(f"the run store cannot read {loc}: {exc}; check the environment's s3_endpoint "
                         "(or $AWS_ENDPOINT_URL) and the AWS credentials") from None


def _code(exc) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def check_bucket(loc: str, endpoint: str | None = None) -> None:
    """UsageError (exit 2) unless the bucket of s3:// LOC exists at the endpoint and takes (and gives up)
    a marker object beside LOC: HEAD bucket, PUT, DELETE."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split(loc)
    url = endpoint_url(endpoint)
    where = f"bucket {bucket!r} at {url or 'AWS S3'} (run store {loc.rsplit('/', 3)[0]})"
    marker = f"{key.rsplit('/', 1)[0]}/{MARKER_NAME}" if "/" in key else MARKER_NAME
    try:
        s3 = client(endpoint)
        s3.head_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=marker, Body=b"")
        s3.delete_object(Bucket=bucket, Key=marker)
    except ClientError as exc:
        raise UsageError(_refusal(where, bucket, _code(exc), exc)) from None
    except BotoCoreError as exc:  # no endpoint answering, no credentials, a bad URL
        raise UsageError(f"the {where} cannot be reached: {exc}; check `s3_endpoint` in the environment file "
                         "(or $AWS_ENDPOINT_URL) and the AWS credentials in the environment; nothing was executed"
                         ) from None


def _refusal(where: str, bucket: str, code: str, exc) -> str:
    if code in ("404", "NoSuchBucket"):
        return (f"the {where} does not exist: create it (aws s3 mb s3://{bucket}) or fix "
                f"{WHERE_SET}; nothing was executed")
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllBucketsAccessDenied"):
        return (f"the {where} refuses access ({code}): give these credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE "
                "in the environment) s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on it; "
                "nothing was executed")
    return f"the {where} cannot be written ({code}: {exc}); nothing was executed"


def kernel_variables(loc: str, environ: dict[str, str], env) -> dict[str, str]:
    """What a kernel needs to reach object storage, when the run's notebook LOC or the DR backups of ENV
    (an ``Environment``: ``dr.backup_store``) are s3://: the runner's AWS credentials and settings, and the
    endpoint as ``AWS_ENDPOINT_URL_S3``. Nothing otherwise: a kernel gets no credential it has no use for."""
    dr = env.get("dr") if isinstance(env.get("dr"), dict) else {}
    if not (loc.startswith("s3://") or str(dr.get("backup_store") or "").startswith("s3://")):
        return {}
    found = {name: environ[name] for name in S3_KERNEL_VARIABLES if environ.get(name)}
    url = endpoint_url(env.get("s3_endpoint"))
    if url:
        found["AWS_ENDPOINT_URL_S3"] = url
    return found
