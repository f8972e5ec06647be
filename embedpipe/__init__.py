"""embedpipe: a frozen pretrained backbone embeds a dataset once into an HDF5 cache; classical heads
train on the cached embeddings in seconds."""

__version__ = "0.1.0"

from .backbones import create_backbone, list_backbones
from .cache import Cache, open_cache
from .errors import EmbedpipeError
from .extract import extract

__all__ = [
    "Cache",
    "EmbedpipeError",
    "__version__",
    "create_backbone",
    "extract",
    "list_backbones",
    "open_cache",
]
