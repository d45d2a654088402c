"""`simulate(graph, values, x)`: the network's forward pass recomputed from its parameter graph.

This is the proof that the graph *is* the network. One package, one concern per file:
engine.py (the layer loop and reading neurons through their op chains), chain.py (the recorded
parameter-free ops: pooling, reshapes, reductions, constants), activations.py, and one file of
edge rules per family (dense.py, conv.py, norm.py, embedding.py) registered in rules.py; layers computed
as a whole: attention.py, recurrent.py.
"""

from .engine import simulate, unsupported_edge_types, unsupported_reasons

__all__ = ["simulate", "unsupported_edge_types", "unsupported_reasons"]
