"""What a synthetic-model trainer says when it is done: lines for people and JSON beside the weights."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path


class TrainingReport:
    """Mixin for the trainers' report dataclasses: `lines()` is theirs; str() and JSON come from here."""

    def lines(self) -> list[str]:
        raise NotImplementedError

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_json(self) -> str:
        data = asdict(self)  # type: ignore[call-overload]
        for f in fields(self):  # type: ignore[arg-type]
            if isinstance(data[f.name], Path):
                data[f.name] = str(data[f.name])
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
