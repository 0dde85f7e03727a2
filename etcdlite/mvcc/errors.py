"""The store's errors, carrying etcd's own texts so the server can pass them through."""


class CompactedError(Exception):
    """The revision asked for is older than the compaction point: its history is gone."""

    def __init__(self, message: str = "mvcc: required revision has been compacted") -> None:
        super().__init__(message)


class FutureRevisionError(Exception):
    """The revision asked for has not happened yet."""

    def __init__(self, message: str = "mvcc: required revision is a future revision") -> None:
        super().__init__(message)
