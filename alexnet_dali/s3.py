"""Data in object storage: the boto3 side of `s3://bucket/prefix` (sources.S3Bucket): the listing
the indexer reads, and the objects' bytes for the decode scan.

boto3 lists the prefix once (every key under it, paginated); the folders are built from the keys.
A file's location is its `s3://bucket/key` URL, which DALI's file reader opens itself through the
AWS SDK inside its wheel: nothing is copied to disk. DALI's client takes its endpoint from
AWS_ENDPOINT_URL alone, so boto3 is given that same endpoint (and no other: not a config file's,
not AWS_ENDPOINT_URL_S3), so that the listing and the reading always ask the same store.

boto3 is an extra (`pip install 'alexnet-dali[s3]'`), imported only when an s3:// path is used.
"""

from __future__ import annotations

import functools
import os
import posixpath

from .errors import DataError
from .log import logger

SCHEME = "s3://"
INSTALL_HINT = "pip install 'alexnet-dali[s3]'"
# Every variable the client depends on: a change (a test, a notebook) gets a new client.
CLIENT_ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                      "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# botocore's errors of the connection (after its retries), and what they mean to a person
UNREACHABLE = {"EndpointConnectionError": "could not connect", "ConnectTimeoutError": "the connection timed out",
               "ReadTimeoutError": "no answer in time", "ConnectionClosedError": "the connection was closed"}
ACCESS_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                           "InvalidToken", "ExpiredToken", "403"})


def split_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key")."""
    bucket, _, key = url[len(SCHEME):].partition("/")
    if not bucket:
        raise DataError(f"{url}: an s3:// URL needs a bucket (s3://BUCKET/PREFIX)")
    return bucket, key


# -- The client ----------------------------------------------------------------------------------

def client():
    """A boto3 S3 client for the current environment (shared: boto3 clients are thread-safe)."""
    return _client(tuple(os.environ.get(name) for name in CLIENT_ENVIRONMENT))


@functools.lru_cache(maxsize=4)
def _client(environment: tuple):
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise DataError(f"s3:// data needs boto3, which is not installed: {INSTALL_HINT}") from None
    settings = dict(zip(CLIENT_ENVIRONMENT, environment))
    endpoint = settings["AWS_ENDPOINT_URL"]
    if settings["AWS_ENDPOINT_URL_S3"] and settings["AWS_ENDPOINT_URL_S3"] != endpoint:
        raise DataError(f"AWS_ENDPOINT_URL_S3 is set ({settings['AWS_ENDPOINT_URL_S3']}) but DALI's S3 reader honours only "
                        "AWS_ENDPOINT_URL: set AWS_ENDPOINT_URL to the same endpoint")
    config = Config(ignore_configured_endpoint_urls=True, connect_timeout=10, read_timeout=60,
                    retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=32)
    try:
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint or None, config=config,
            region_name=settings["AWS_REGION"] or settings["AWS_DEFAULT_REGION"] or None)
    except ValueError as e:  # botocore's answer to an endpoint that is not a URL
        raise DataError(f"AWS_ENDPOINT_URL={endpoint!r} is not a usable S3 endpoint: {e}") from None
    except Exception as e:  # an unknown AWS_PROFILE, a broken config file, ...
        raise DataError(f"cannot set up the S3 client: {e}") from None


def explain(error: Exception, url: str) -> str | None:
    """One line saying what went wrong asking the store about `url`, or None if it is not an error
    of the store (the caller then lets it through)."""
    from botocore import exceptions

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    if isinstance(error, exceptions.NoCredentialsError):
        return (f"no AWS credentials to read {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)")
    for kind, what in UNREACHABLE.items():
        if isinstance(error, getattr(exceptions, kind)):
            return f"cannot reach the S3 endpoint {endpoint} to read {url}: {what}; check AWS_ENDPOINT_URL"
    if isinstance(error, exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        message = error.response.get("Error", {}).get("Message", "") or str(error)
        bucket = split_url(url)[0]
        if code == "NoSuchBucket":
            return f"no such bucket {bucket!r} at {endpoint} (reading {url}): check the bucket name and AWS_ENDPOINT_URL"
        if code in ACCESS_DENIED:
            return f"access denied to {url} ({code}: {message}): check the credentials and the bucket's policy"
        return f"the S3 endpoint {endpoint} refused to read {url}: {code} {message}".rstrip()
    if isinstance(error, exceptions.BotoCoreError):
        return f"cannot read {url} from {endpoint}: {error}"
    return None


# -- Objects ---------------------------------------------------------------------------------------

# url -> "ETag\0size" from the newest listing: the scan keys its cache by them (object_identity), so the
# indexer hands on only URLs and no object is asked about twice. The keys are the very URL strings
# the splits hold, and the value is one short string: ImageNet's 1.28M objects cost ~150 MB here.
LISTED: dict[str, str] = {}


def read_object(url: str) -> bytes:
    """An object's bytes. FileNotFoundError if there is no such object, OSError for other failures."""
    store = client()  # first: it says what to install where boto3 is missing
    from botocore import exceptions

    bucket, key = split_url(url)
    try:
        return store.get_object(Bucket=bucket, Key=key)["Body"].read()
    except exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise FileNotFoundError(f"no such object: {url}") from None
        raise OSError(explain(e, url)) from None
    except exceptions.BotoCoreError as e:
        raise OSError(explain(e, url)) from None


def read_image(url: str) -> bytes:
    """An image object's bytes for the decode scan. DALI's reader parses "?" and "#" in an s3://
    URL as a query and a fragment and then fails the whole pipeline (checked with DALI 2.4), so such
    a key is named here, before training, like any file that would stop it."""
    if "?" in url or "#" in url:
        raise OSError("DALI's S3 reader cannot open a key with '?' or '#' in it: rename the object")
    return read_object(url)


def object_identity(url: str) -> str | None:
    """Identity of an object's current content: "ETag\0size", from the listing or a HEAD."""
    identity = LISTED.get(url)
    if identity is None:
        bucket, key = split_url(url)
        try:
            head = client().head_object(Bucket=bucket, Key=key)
        except Exception:  # missing or unreadable: the scan then reports it
            return None
        identity = f"{head.get('ETag', '')}\0{int(head.get('ContentLength', 0))}"
    return identity


def read_text(url: str, what: str) -> str:
    """A label file in the bucket, as text; DataError naming it if it cannot be had."""
    try:
        data = read_object(url)
    except FileNotFoundError:
        raise DataError(f"{what} file {url} does not exist") from None
    except OSError as e:
        raise DataError(f"{what} file {url} cannot be read: {e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} file {url} cannot be read: {e}") from None


def list_objects(url: str) -> dict[str, str]:
    """key relative to the prefix -> "ETag\0size" of every object under s3://bucket/prefix.
    DataError in one line when the store cannot be asked or holds nothing there."""
    bucket, prefix = split_url(url)
    prefix = prefix.strip("/")
    prefix = prefix + "/" if prefix else ""  # s3://b/data must not take in s3://b/data2/...
    store = client()
    found: dict[str, str] = {}
    try:
        for page in store.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"][len(prefix):]] = f"{item.get('ETag', '')}\0{int(item.get('Size', 0))}"
    except Exception as e:
        line = explain(e, url)
        if line is None:
            raise
        raise DataError(line) from None
    if not found:
        raise DataError(f"{url} holds no objects: check the prefix (keys are case-sensitive){siblings(bucket, prefix)}")
    return found


def siblings(bucket: str, prefix: str) -> str:
    """" (prefixes in s3://bucket/parent/: a/, b/)" to help with a mistyped prefix, or ""."""
    parent = posixpath.dirname(prefix.rstrip("/"))
    parent = parent + "/" if parent else ""
    try:
        page = client().list_objects_v2(Bucket=bucket, Prefix=parent, Delimiter="/", MaxKeys=20)
    except Exception:
        return ""
    names = [p["Prefix"][len(parent):] for p in page.get("CommonPrefixes", [])]
    return f" (prefixes in {SCHEME}{bucket}/{parent}: {', '.join(names) or 'none'})"


# -- The tree --------------------------------------------------------------------------------------

def list_tree(url: str) -> tuple[dict[str, str], dict[str, tuple[set[str], set[str]]]]:
    """Every object under s3://bucket/prefix, listed once, as a folder tree: (relative path ->
    URL, folder -> (file names, folder names)). Paths are POSIX-relative to the prefix ("" is
    the root); a folder is a key prefix ending in "/" that some key lies under."""
    url = url.rstrip("/")
    objects: dict[str, str] = {}
    folders: dict[str, tuple[set[str], set[str]]] = {"": (set(), set())}

    def add_folder(folder: str) -> None:
        """The folder, and each folder above it, entered in its parent."""
        if folder in folders:
            return
        parent, name = posixpath.split(folder)
        add_folder(parent)
        folders[folder] = (set(), set())
        folders[parent][1].add(name)

    skipped = []
    for rel, identity in sorted(list_objects(url).items()):
        if not rel or rel.endswith("/"):  # a folder marker (made by consoles): the folder, not a file
            add_folder(rel.rstrip("/"))
            continue
        if "" in rel.split("/"):
            skipped.append(rel)
            continue
        objects[rel] = object_url = f"{url}/{rel}"
        LISTED[object_url] = identity
        folder, name = posixpath.split(rel)
        add_folder(folder)
        folders[folder][0].add(name)
    if skipped:  # a path with an empty segment has no place in a folder tree
        logger.warning(f"{len(skipped)} key(s) under {url} with an empty path segment ('//') are not read "
                       f"(first: {skipped[0]!r})")
    return objects, folders
