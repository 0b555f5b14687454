"""Data: synthetic generators and the shared (checksum-verified) data folder."""

from attnopt.data.shared import DataError, data_root, shared_file

__all__ = ["DataError", "data_root", "shared_file"]
