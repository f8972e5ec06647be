"""What every layer uses and nothing of embedpipe's own: errors, atomic writes, file locks, the
device and precision rules, the thread rule of fits, the layer-name grammar, logging and the registry
pattern."""
