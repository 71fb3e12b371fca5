"""Built-in projectors, one module per constraint family; importing registers them."""

from . import block, mass, marginal, support  # noqa: F401

from .block import BlockMassProjector
from .marginal import MarginalProjector
from .mass import TotalMassProjector
from .support import ForbidProjector

__all__ = ["MarginalProjector", "TotalMassProjector", "ForbidProjector", "BlockMassProjector"]
