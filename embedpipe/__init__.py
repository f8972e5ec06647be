"""embedpipe: a frozen pretrained backbone embeds a dataset once into an HDF5 cache; classical heads
train on the cached embeddings in seconds."""

__version__ = "0.1.0"

from .backbones import BackboneConfig, create_backbone, list_backbones  # noqa: E402
from .bench import benchmark  # noqa: E402
from .cache import Cache, open_cache  # noqa: E402
from .errors import EmbedpipeError  # noqa: E402
from .extract import ExtractConfig, extract  # noqa: E402
from .heads import create_head, list_heads  # noqa: E402
from .predict import predict  # noqa: E402
from .train import evaluate, train, train_heads  # noqa: E402

__all__ = [
    "BackboneConfig",
    "Cache",
    "EmbedpipeError",
    "ExtractConfig",
    "__version__",
    "benchmark",
    "create_backbone",
    "create_head",
    "evaluate",
    "extract",
    "list_backbones",
    "list_heads",
    "open_cache",
    "predict",
    "train",
    "train_heads",
]
