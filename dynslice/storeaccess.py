"""Reaching an object store: which failures are worth retrying, and where its credentials come from.

Transient: connection errors, timeouts and throttling (botocore, aiobotocore, aiohttp and the OS). Permanent:
a missing bucket, denied access, bad credentials. The names are matched along the exception's class hierarchy
and its causes, so neither botocore nor aiohttp has to be installed to use a local store.
"""

from __future__ import annotations

import errno
import os

_TRANSIENT_CLASSES = {
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
    "ResponseStreamingError", "IncompleteReadError", "ProxyConnectionError", "HTTPClientError",
    "ClientConnectionError", "ServerDisconnectedError", "ClientOSError", "ServerTimeoutError",
    "FSTimeoutError", "TimeoutError", "ConnectionError", "ConnectionResetError", "BrokenPipeError",
}
_TRANSIENT_CODES = {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                    "RequestLimitExceeded", "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}
_PERMANENT_CODES = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                    "InvalidBucketName", "403", "404"}
_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE}
_PERMANENT_CLASSES = {"FileNotFoundError", "PermissionError", "IsADirectoryError", "NotADirectoryError",
                      "NoCredentialsError", "PartialCredentialsError", "DynsliceError"}


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return str(error.get("Code")) if error.get("Code") is not None else None
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether trying again later can succeed (the storage or the network hiccuped), never for bad input."""
    for link in _chain(exc):
        names = {cls.__name__ for cls in type(link).__mro__}
        code = _code(link)
        if names & _PERMANENT_CLASSES or code in _PERMANENT_CODES:
            return False
        if names & _TRANSIENT_CLASSES or code in _TRANSIENT_CODES:
            return True
        if isinstance(link, OSError) and link.errno in _TRANSIENT_ERRNOS:
            return True
    return False


def credential_source(uri: str, storage_options: dict | None = None) -> str:
    """Where the credentials for `uri` come from, in words (never the secret itself)."""
    options = storage_options or {}
    if not uri.startswith(("s3://", "s3a://")):
        return "the file system's own access rights" if "://" not in uri or uri.startswith("file://") \
            else "the fsspec defaults of this protocol"
    if options.get("key") or options.get("secret"):
        return "the store's storage options (e.g. a Prefect block)"
    if options.get("anon"):
        return "anonymous access (storage option anon=true)"
    try:
        import botocore.exceptions
        import botocore.session
    except ImportError:
        return "unknown (botocore is not installed)"
    try:
        credentials = botocore.session.Session(profile=options.get("profile")).get_credentials()
    except botocore.exceptions.BotoCoreError as exc:  # a broken AWS config file is itself the answer
        return f"an unreadable AWS configuration ({type(exc).__name__}: {exc})"
    if credentials is None:
        return "no credentials at all (none in the environment, the AWS config files or an instance role)"
    method = {"env": "environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
              "shared-credentials-file": f"the AWS shared credentials file (profile "
                                         f"{options.get('profile') or os.environ.get('AWS_PROFILE', 'default')})",
              "config-file": "the AWS config file", "iam-role": "the instance's IAM role",
              "container-role": "the container's IAM role"}
    return method.get(credentials.method, f"AWS credential provider `{credentials.method}`")
