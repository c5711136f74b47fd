"""docs/configuration.md lists every setting there is, and no setting that is not."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from aqueue.core.config import Settings

DOC = Path(__file__).parents[1] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    table = DOC.read_text().split("## Every setting", 1)[1]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    settings = {f.name for f in dataclasses.fields(Settings)} - {"explicit", "router", "keyring"}
    assert documented == settings, (
        f"missing: {sorted(settings - documented)}; not settings: {sorted(documented - settings)}"
    )
