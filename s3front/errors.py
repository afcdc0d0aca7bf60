"""S3 error codes and the XML error document.

Why: every failure a client sees must carry the exact S3 ``Code`` and HTTP
status that SDKs branch on (retry on ``SlowDown``, re-sign on
``RequestTimeTooSkewed``, ``NoSuchKey`` vs ``AccessDenied``...). Keeping the
table in one place lets every protocol module raise ``S3Error.of("Code")``
without repeating statuses or messages.
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["S3Error", "ERRORS", "error_xml", "xml_text"]

# code -> (HTTP status, default message), as S3 documents them.
ERRORS: dict[str, tuple[int, str]] = {
    "AccessDenied": (403, "Access Denied"),
    "AccountProblem": (
        403,
        "There is a problem with your AWS account that prevents the operation from "
        "completing successfully.",
    ),
    "AuthorizationHeaderMalformed": (400, "The authorization header is malformed."),
    "AuthorizationQueryParametersError": (
        400,
        "Error parsing the X-Amz-Credential parameter.",
    ),
    "BadDigest": (400, "The Content-MD5 you specified did not match what we received."),
    "BucketAlreadyExists": (
        409,
        "The requested bucket name is not available. The bucket namespace is shared by "
        "all users of the system. Please select a different name and try again.",
    ),
    "BucketAlreadyOwnedByYou": (
        409,
        "Your previous request to create the named bucket succeeded and you already own it.",
    ),
    "BucketNotEmpty": (409, "The bucket you tried to delete is not empty"),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed size"),
    "EntityTooSmall": (
        400,
        "Your proposed upload is smaller than the minimum allowed object size.",
    ),
    "ExpiredToken": (400, "The provided token has expired."),
    "IncompleteBody": (
        400,
        "You did not provide the number of bytes specified by the Content-Length HTTP header",
    ),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": (
        403,
        "The AWS Access Key Id you provided does not exist in our records.",
    ),
    "InvalidArgument": (400, "Invalid Argument"),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidDigest": (400, "The Content-MD5 you specified is not valid."),
    "InvalidObjectState": (
        403,
        "The operation is not valid for the current state of the object.",
    ),
    "InvalidPart": (
        400,
        "One or more of the specified parts could not be found. The part may not have "
        "been uploaded, or the specified entity tag may not match the part's entity tag.",
    ),
    "InvalidPartOrder": (
        400,
        "The list of parts was not in ascending order. Parts must be ordered by part number.",
    ),
    "InvalidRange": (416, "The requested range is not satisfiable"),
    "InvalidPartNumber": (416, "The requested partnumber is not satisfiable"),
    "InvalidRequest": (400, "Invalid Request"),
    "InvalidURI": (400, "Couldn't parse the specified URI."),
    "InvalidLocationConstraint": (400, "The specified location-constraint is not valid."),
    "MetadataTooLarge": (400, "Your metadata headers exceed the maximum allowed metadata size."),
    "KeyTooLongError": (400, "Your key is too long"),
    "MalformedXML": (
        400,
        "The XML you provided was not well-formed or did not validate against our "
        "published schema",
    ),
    "MalformedTrailerError": (
        400,
        "The request contained trailing data that was not well-formed or did not "
        "conform to our published schema.",
    ),
    "MaxMessageLengthExceeded": (400, "Your request was too big."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
    "MissingSecurityHeader": (400, "Your request is missing a required header."),
    "NoSuchBucket": (404, "The specified bucket does not exist"),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchUpload": (
        404,
        "The specified multipart upload does not exist. The upload ID may be invalid, "
        "or the upload may have been aborted or completed.",
    ),
    "NoSuchVersion": (404, "The specified version does not exist."),
    "NotImplemented": (
        501,
        "A header you provided implies functionality that is not implemented",
    ),
    "PreconditionFailed": (
        412,
        "At least one of the pre-conditions you specified did not hold",
    ),
    "RequestTimeTooSkewed": (
        403,
        "The difference between the request time and the current time is too large.",
    ),
    "RequestTimeout": (
        400,
        "Your socket connection to the server was not read from or written to within "
        "the timeout period.",
    ),
    "ServiceUnavailable": (503, "Please reduce your request rate."),
    "SignatureDoesNotMatch": (
        403,
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
    ),
    "SlowDown": (503, "Please reduce your request rate."),
    "UserKeyMustBeSpecified": (
        400,
        "The bucket POST must contain the specified field name. If it is specified, "
        "check the order of the fields.",
    ),
    "XAmzContentSHA256Mismatch": (
        400,
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    ),
}


class S3Error(Exception):
    """An S3 protocol error: code, message, HTTP status and extra elements.

    ``extra`` holds the additional child elements S3 puts in the error
    document (``BucketName``, ``Key``, ``UploadId``, ``ArgumentName``,
    ``StringToSign``...), in insertion order.
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        status: int | None = None,
        *,
        resource: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        known = ERRORS.get(code)
        if status is None:
            status = known[0] if known else 400
        if message is None:
            message = known[1] if known else code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.resource = resource
        self.extra: dict[str, str] = dict(extra or {})

    @classmethod
    def of(
        cls,
        code: str,
        message: str | None = None,
        *,
        resource: str | None = None,
        **extra: object,
    ) -> "S3Error":
        """Build from the table; keyword arguments become extra elements.

        Lower-case keyword names are mapped to S3's element names
        (``key`` -> ``Key``, ``bucket`` -> ``BucketName``,
        ``upload_id`` -> ``UploadId``); others are used as given.
        ``None`` values are skipped.
        """
        if code not in ERRORS:
            raise ValueError(f"unknown S3 error code {code!r}")
        fields = {
            _EXTRA_NAMES.get(name, name): str(value)
            for name, value in extra.items()
            if value is not None
        }
        return cls(code, message, resource=resource, extra=fields)

    def __repr__(self) -> str:
        return f"S3Error({self.code!r}, {self.message!r}, {self.status}, extra={self.extra!r})"


_EXTRA_NAMES = {
    "key": "Key",
    "bucket": "BucketName",
    "upload_id": "UploadId",
    "version_id": "VersionId",
    "argument_name": "ArgumentName",
    "argument_value": "ArgumentValue",
    "part_number": "PartNumber",
    "etag": "ETag",
}

# XML 1.0 cannot carry most C0 controls; S3 writes them as character
# references anyway. \r must be a reference or parsers turn it into \n.
_XML_TABLE = {c: f"&#x{c:x};" for c in range(0x20) if c not in (0x09, 0x0A)}
_XML_TABLE.update({ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"})


def xml_text(value: str) -> str:
    """Escape ``value`` for use as XML element text (one C-level pass)."""
    return value.translate(_XML_TABLE)


def error_xml(err: S3Error, request_id: str) -> bytes:
    """Render the S3 ``<Error>`` document for ``err``."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>',
        xml_text(err.code),
        "</Code><Message>",
        xml_text(err.message),
        "</Message>",
    ]
    if err.resource is not None:
        parts += ["<Resource>", xml_text(err.resource), "</Resource>"]
    parts += ["<RequestId>", xml_text(request_id), "</RequestId>"]
    for name, value in err.extra.items():
        parts += [f"<{name}>", xml_text(value), f"</{name}>"]
    parts.append("</Error>")
    return "".join(parts).encode("utf-8")
