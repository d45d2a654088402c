"""outer_train: meta-train GMNOptimizer update rules (TBPTT / PES, Accelerate, TensorBoard) and evaluate them.

Entry points: ``python -m outer_train`` (training, see ``--help``) and ``python -m outer_train.evaluate``.
"""
