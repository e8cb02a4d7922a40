"""The file-cost model Huffman decides by (encoding.file_cost) mirrors the layout container.write
uses: the compact 1.1 layout (deflated header, small streams unpadded), not 1.0's."""

from __future__ import annotations

import io

import pytest

from conftest import SAMPLES, shared_path
from deepcompress_cli import container
from deepcompress_cli.encoding import file_cost
from deepcompress_cli.files import read_model
from deepcompress_cli.stages.compress import compress
from deepcompress_cli.stages.entropy import huffman
from deepcompress_cli.stages.prune import PruneConfig, prune
from deepcompress_cli.stages.share import ShareConfig, share


def _model(name: str):
    return SAMPLES / name if name.startswith("lenet") else shared_path("models", name)


def _size(package) -> int:
    return container.write(package, io.BytesIO())


MODELS = ["lenet300.onnx", "lenet5.onnx", "mnist_cnn.onnx"]


@pytest.mark.parametrize("name", MODELS)
def test_entry_costs_track_the_compact_file(name):
    # What the model charges beyond the stream bytes is about what the file really spends on them:
    # 1.0's 64-byte padding and raw header text overestimated it about 3x on these models.
    package = read_model(str(_model(name)))
    compress(package, PruneConfig(), ShareConfig())
    size = _size(package)
    streams = sum(s.length for t in package.tensors for s in t.streams.values())
    estimated = sum(file_cost(t) for t in package.tensors) - streams
    assert 0 < estimated <= 1.5 * (size - streams)


@pytest.mark.parametrize("name", MODELS)
def test_prune_share_huffman_never_grows_the_file(name):
    package = read_model(str(_model(name)))
    prune(package, PruneConfig())
    share(package, ShareConfig())
    before = _size(package)
    huffman(package)
    assert _size(package) <= before


def test_small_streams_cost_no_padding():
    from deepcompress_cli.encoding import _stream_bytes

    small, big = container.PACKED_ALIGN_FROM - 1, container.PACKED_ALIGN_FROM
    assert _stream_bytes(1) == 1 and _stream_bytes(small) == small
    assert _stream_bytes(big) == big + container.ALIGN - 1
