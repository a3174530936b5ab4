"""The row every benchmark case returns."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BenchResult:
    """One measured figure of plmkit and the reference. `ratio` is plmkit / reference."""

    case: str
    metric: str
    plmkit: float
    reference: float
    unit: str
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.plmkit / self.reference if self.reference else math.nan
