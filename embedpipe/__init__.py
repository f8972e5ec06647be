"""embedpipe: a frozen pretrained backbone embeds a dataset once into an HDF5 cache; classical heads
train on the cached embeddings in seconds."""

from .advise import advise
from .backbones import BackboneConfig, create_backbone, list_backbones
from .bench import benchmark
from .cache import Cache, open_cache
from .core.errors import EmbedpipeError
from .core.version import __version__
from .extract import ExtractConfig, extract
from .heads import create_head, list_heads
from .predict import predict
from .train import evaluate, few_shot, train, train_heads

__all__ = [
    "BackboneConfig",
    "Cache",
    "EmbedpipeError",
    "ExtractConfig",
    "__version__",
    "advise",
    "benchmark",
    "create_backbone",
    "create_head",
    "evaluate",
    "extract",
    "few_shot",
    "list_backbones",
    "list_heads",
    "open_cache",
    "predict",
    "train",
    "train_heads",
]
