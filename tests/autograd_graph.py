"""A walk over an autograd graph, shared by the tests that check which ops a forward pass used."""

from __future__ import annotations

import torch


def backward_node_names(tensor: torch.Tensor) -> set[str]:
    """Names of every node in ``tensor``'s backward graph (``MmBackward0``, ``_NormMaxBackward``, ...)."""
    seen, names, todo = set(), set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    return names
