"""Extraction as explicit stages: plan -> read -> decode -> embed -> write (see shared DESIGN.md).

Each stage is a function or small class with a typed input and output, testable alone on CPU; the
local engine wires them into a pipeline, the Ray engine runs "execute one shard of the plan".
"""
