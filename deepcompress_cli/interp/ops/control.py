"""Control flow: If runs one of its branches as a subgraph in the enclosing scope."""

from __future__ import annotations

import numpy as np

from . import op


@op("If")
def if_(inputs, attrs, ctx):
    branch = attrs["then_branch"] if bool(np.asarray(inputs[0]).reshape(-1)[0]) else attrs["else_branch"]
    return ctx.run_graph(branch, {})
