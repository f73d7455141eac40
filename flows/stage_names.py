"""The pipeline's stages, in order. No Prefect import here: the command line's help lists them."""

from __future__ import annotations

from typing import Literal, get_args

Stage = Literal["extract", "teacher", "train", "evaluate", "index"]
ALL_STAGES: list[Stage] = list(get_args(Stage))
