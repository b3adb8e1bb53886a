"""A lifelong run's options, checked before anything runs, and its checkpoint schedule."""
from __future__ import annotations

import dataclasses

from ..errors import UserError
from ..plugins import default_diagnostics, registry


class LifelongError(UserError, ValueError):
    pass


@dataclasses.dataclass
class RunOptions:
    num_edits: int | None = None
    start: int = 0
    shuffle: bool = False
    seed: int = 0
    batch_size: int | None = None  # edits per apply call; default: hparams.edits_per_call(), else its batch_size
    checkpoints: list | None = None  # explicit steps; default 1, 2, 4, ... and the last
    save_every: int = 10
    probe_data: str | None = None  # never-edited facts (ROME's known_1000.json format)
    num_probes: int = 100
    # unrelated questions (a ZsRE file's loc/loc_ans): the first num_unrelated scored, the rest a training pool
    unrelated_data: str | None = None
    num_unrelated: int = 200
    diagnostics: list = dataclasses.field(default_factory=default_diagnostics)  # the registered defaults

    def check(self) -> None:
        """Refuse values that would silently run something else than asked."""
        for name, least in (("num_edits", 1), ("start", 0), ("batch_size", 1), ("save_every", 1), ("num_probes", 0),
                            ("num_unrelated", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise LifelongError(f"{name.replace('_', '-')} must be an integer of at least {least}, got {value!r}")
        if self.checkpoints is not None and not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                                    for s in self.checkpoints):
            raise LifelongError(f"checkpoints must be steps of at least 1, got {self.checkpoints!r}")
        known = registry().diagnostics
        unknown = [d for d in self.diagnostics if d not in known]
        if unknown:
            raise LifelongError(f"unknown diagnostic(s) {unknown}; known: {sorted(known)}")


def checkpoint_steps(total: int, explicit=None) -> list[int]:
    if explicit:
        return sorted({s for s in explicit if 1 <= s <= total} | {total})
    steps, s = set(), 1
    while s < total:
        steps.add(s)
        s *= 2
    return sorted(steps | {total})
