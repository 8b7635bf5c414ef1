"""An ``s3://`` prefix listed a page at a time, through boto3's paginator.

pyarrow's S3 listing returns a whole folder (about 325 bytes an object, so a flat prefix of 100M
objects is about 33 GB in one process) and cannot stop partway. boto3's ``list_objects_v2``
pages hold :data:`PAGE_KEYS` keys, and a caller can stop after any page: the in-process first
look of a Ray job gives up on a flat prefix after a bound, and no Ray task holds more than a page.
The client is set up from the pyarrow filesystem the URI resolves to (endpoint, region, keys,
anonymous access, CA file, proxy), so both read the same bucket the same way. boto3 comes with the
``ray`` extra and is imported here only, on first use.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from imgcluster.errors import ImgclusterError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

PAGE_KEYS = 1000  # S3's largest page
CONNECT_SECONDS = 10  # where the URI sets none: a dead endpoint fails a call within 3 x (10 + 30) s
READ_SECONDS = 30
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

Entry = tuple[str, int, int | None]  # "bucket/key", size, mtime_ns; a folder (common prefix) as ("bucket/prefix/", 0, None)


def client(fs: pafs.S3FileSystem) -> Any:
    """A boto3 S3 client with ``fs``'s settings (as ``from_uri`` resolved them from the URI and the
    environment), its calls bounded as imgcluster bounds pyarrow's."""
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:
        raise ImgclusterError("listing s3:// needs boto3, part of the 'ray' extra: pip install 'imgcluster[ray]'") from None
    from imgcluster.featurestore import S3_ATTEMPTS

    options = fs.__reduce__()[1][0]  # the options pyarrow resolved, as it pickles them
    endpoint = options["endpoint_override"] or None
    if endpoint is not None and "://" not in endpoint:
        endpoint = f"{options['scheme']}://{endpoint}"
    proxy = options["proxy_options"]
    config = Config(
        connect_timeout=options["connect_timeout"] if options["connect_timeout"] > 0 else CONNECT_SECONDS,
        read_timeout=options["request_timeout"] if options["request_timeout"] > 0 else READ_SECONDS,
        retries={"mode": "standard", "max_attempts": S3_ATTEMPTS},
        signature_version=UNSIGNED if options["anonymous"] else None,
        s3={"addressing_style": "virtual" if options["force_virtual_addressing"] or endpoint is None else "path"},
        proxies={"http": _proxy(proxy), "https": _proxy(proxy)} if proxy and proxy.get("host") else None,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=options["region"] or None, config=config,
        aws_access_key_id=options["access_key"] or None, aws_secret_access_key=options["secret_key"] or None,
        aws_session_token=options["session_token"] or None, verify=options["tls_ca_file_path"] or None,
    )  # fmt: skip


def _proxy(proxy: dict[str, Any]) -> str:
    auth = f"{proxy['username']}:{proxy['password']}@" if proxy.get("username") else ""
    port = f":{proxy['port']}" if proxy.get("port", -1) > 0 else ""
    return f"{proxy.get('scheme') or 'http'}://{auth}{proxy['host']}{port}"


def entries(s3: Any, where: str, recursive: bool, context: str) -> Iterator[Entry]:
    """The objects under ``where`` ("bucket/prefix"), a page at a time: every one with
    ``recursive``, else those directly in it and its sub-folders. A missing bucket lists nothing
    (as pyarrow's ``allow_not_found``); another failure is one ImgclusterError, ``context`` first."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = where.partition("/")
    prefix = f"{key.rstrip('/')}/" if key else ""
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": PAGE_KEYS}}
    if not recursive:
        args["Delimiter"] = "/"
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(**args):
            for folder in page.get("CommonPrefixes", ()):
                yield f"{bucket}/{folder['Prefix']}", 0, None
            for obj in page.get("Contents", ()):
                if not obj["Key"].endswith("/"):  # a folder's marker object, as pyarrow leaves it out
                    yield f"{bucket}/{obj['Key']}", int(obj["Size"]), _mtime_ns(obj["LastModified"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return
        raise ImgclusterError(f"{context}: {exc}") from None
    except BotoCoreError as exc:
        raise ImgclusterError(f"{context}: {exc}") from None


def _mtime_ns(stamp: datetime.datetime) -> int:
    """In integers (a float timestamp loses nanoseconds): S3 gives milliseconds, as pyarrow reads them."""
    return (stamp - _EPOCH) // datetime.timedelta(microseconds=1) * 1000
