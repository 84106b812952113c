"""fastobs: a fast, oc observe-compatible way to turn any script into a Kubernetes controller.

The pipeline (docs/architecture.md has the details)::

    kube API ─▶ source ─▶ tracker ─▶ sharder ─▶ queue ─▶ pool ══pipe══▶ worker ─▶ runner ─▶ command
                                                          └── metrics (parent) ◀── DONE / tick frames
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
