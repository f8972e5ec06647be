"""embedpipe: a frozen pretrained backbone embeds a dataset once into an HDF5 cache; classical heads
train on the cached embeddings in seconds."""

from typing import TYPE_CHECKING

from .core.errors import EmbedpipeError
from .core.lazy import lazy_exports
from .core.version import __version__

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and IDEs
    from .advise import advise
    from .audit import AuditResult, audit
    from .backbones import BackboneConfig, create_backbone, list_backbones
    from .bench import benchmark
    from .cache import Cache, open_cache
    from .extract import ExtractConfig, extract
    from .heads import create_head, list_heads
    from .predict import predict
    from .sklearn import ImageEmbedder
    from .train import evaluate, few_shot, train, train_heads

# The public API, imported on first use: `import embedpipe` (and the CLI's --help, list, info) needs no
# torch or scikit-learn. `extract`, `train`, `predict`, `advise` and `audit` are functions that share their
# submodule's name; the function is what `embedpipe.<name>` means, whichever is imported first.
__getattr__, __dir__ = lazy_exports(__name__, {
    "BackboneConfig": ".backbones",
    "Cache": ".cache",
    "ExtractConfig": ".extract",
    "AuditResult": ".audit",
    "ImageEmbedder": ".sklearn",
    "advise": ".advise",
    "audit": ".audit",
    "benchmark": ".bench",
    "create_backbone": ".backbones",
    "create_head": ".heads",
    "evaluate": ".train",
    "extract": ".extract",
    "few_shot": ".train",
    "list_backbones": ".backbones",
    "list_heads": ".heads",
    "open_cache": ".cache",
    "predict": ".predict",
    "train": ".train",
    "train_heads": ".train",
})

__all__ = [
    "AuditResult",
    "BackboneConfig",
    "Cache",
    "EmbedpipeError",
    "ExtractConfig",
    "ImageEmbedder",
    "__version__",
    "advise",
    "audit",
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
