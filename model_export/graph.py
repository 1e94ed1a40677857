"""One ONNX export: torch.onnx.export (dynamo) with named dynamic axes, then
``onnx.checker``. Every graph of a bundle is written through here."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn


def export_graph(
    module: nn.Module,
    example: tuple[Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: dict[str, dict[int, Any]],
    path: Path,
    opset: int,
) -> None:
    """Write ``module`` traced on ``example`` to ``path`` and check the file.

    The dynamo exporter is used: the legacy TorchScript one emits ``EyeLike`` on bool
    for the attention mask, which ONNX Runtime's CPU provider does not implement.
    """
    with warnings.catch_warnings():
        # Known noise of torch 2.13's exporter: axes sharing a constraint keep the
        # first name (they all keep ours here) and a pytree deprecation inside torch.
        warnings.filterwarnings(
            "ignore", message=r"# The axis name", category=UserWarning
        )
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=True,
            external_data=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
