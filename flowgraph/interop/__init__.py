r"""Weights from other implementations: `flowgraph import official` (the DenseFlow authors' code).

The mapping between two state dicts is data, not code: a ``<spec>.official.yaml`` file next to
the spec it serves lists structural rules (see `flowgraph.interop.mapping`), and
`flowgraph.interop.official` applies them to a checkpoint with full checks.
"""

from flowgraph.interop.mapping import MAPPING_SUFFIX, StateMapping, load_mapping, mapping_for_spec
from flowgraph.interop.official import (
    ImportReport,
    WeightImportError,
    import_official,
    plan_import,
    read_official_checkpoint,
)

__all__ = ["MAPPING_SUFFIX", "ImportReport", "StateMapping", "WeightImportError",
           "import_official", "load_mapping", "mapping_for_spec", "plan_import",
           "read_official_checkpoint"]
