"""The S3 HTTP surface (aiohttp): protocol pieces (SigV4, aws-chunked, S3 XML and
errors, checksums, names) live here; the server itself comes with issue 3."""
