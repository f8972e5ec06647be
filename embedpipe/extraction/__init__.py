"""Extraction as explicit stages, one module each: plan -> decode (read + decode) -> embed ->
shard (assemble a shard's rows) -> write; ``defaults.py`` holds every tuning number with its reason.

Each stage is a function or small class with a typed input and output, testable alone on CPU. The
engines (``embedpipe/engines/``) wire them together: the local engine into one pipeline with
bounded queues, the Ray engine into "execute one shard of the plan" inside an actor.
"""
