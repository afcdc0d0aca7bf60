"""What the cold tier tells the layers above it."""


class ColdLagExceeded(Exception):
    """Too much of the log is above the cold HWM (cold storage down or slow): writes
    get S3 503 SlowDown until the shipper catches up."""


class ColdChunkUnavailable(Exception):
    """The chunk is not in cold storage, or too many of its shards are lost."""
