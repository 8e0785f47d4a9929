#!/usr/bin/env python3
"""The same as the ``pcea-onnx`` command (:mod:`pcea.onnx_runner`), kept so that old commands work.

    python scripts/onnx_classify.py model.onnx chair.off scans/ [--top-k 3] [--json]
"""

from pcea.onnx_runner import main

if __name__ == "__main__":
    raise SystemExit(main())
