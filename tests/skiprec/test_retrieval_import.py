"""skiprec.retrieval can be imported before anything else that loads ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_index_module_first_leaves_onnx_runtime_loadable():
    # usearch loaded before onnxruntime crashes the interpreter (a segfault), so
    # the check needs an interpreter of its own.
    code = "import skiprec.retrieval, onnxruntime; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
