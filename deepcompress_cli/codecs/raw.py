"""`raw`: the array stored as is (little-endian), one output role `data`."""

from ..errors import DczError

NAME = "raw"
ROLES = ("data",)


def label(params: dict) -> str:
    return NAME


def check(params: dict, target, parts: dict) -> None:
    if params:
        raise DczError("codec raw takes no parameters")
    data = parts["data"]
    if data.dtype != target.dtype or data.count != target.count:
        raise DczError(f"raw data is {data.count} x {data.dtype}, expected {target.count} x {target.dtype}")


def decode(params: dict, target, arrays: dict):
    return arrays["data"]

