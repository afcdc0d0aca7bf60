"""The reference for S3 listing, written the obvious, slow way: engine and S3 tests
both compare against it."""


def s3_listing(keys, prefix: str = "", delimiter: str = "", start_after: str = "") -> list:
    """[("k", key) | ("p", common prefix)] in UTF-8 byte order: keys under `prefix`,
    rolled up at the first `delimiter` after it, each common prefix once, and only
    items sorting strictly after `start_after`."""
    items, seen = [], set()
    after = start_after.encode()
    for k in sorted(keys, key=str.encode):
        if not k.startswith(prefix):
            continue
        if delimiter:
            i = k.find(delimiter, len(prefix))
            if i >= 0:
                cp = k[: i + len(delimiter)]
                if cp not in seen:
                    seen.add(cp)
                    if not (after and cp.encode() <= after):
                        items.append(("p", cp))
                continue
        if not (after and k.encode() <= after):
            items.append(("k", k))
    return items
