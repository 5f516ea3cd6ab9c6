"""The complete example in docs/plugin-guide.md works as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

from conftest import make_sae

from sae_lens_ext import run
from sae_lens_ext.plugins import get_registry

GUIDE = Path(__file__).parent.parent / "docs" / "plugin-guide.md"


def test_plugin_guide_example_runs(
    fresh_registry, monkeypatch, tiny_model, tiny_tokens, tmp_path
):
    source = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)[0]
    module = types.ModuleType("guide_share_plugin")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, str(GUIDE), "exec"), module.__dict__)
    get_registry().register(module, name="share")
    output = run(
        sae=make_sae(),
        model=tiny_model,
        dataset=tiny_tokens,
        plugins=["share"],
        config={"share": {"bins": 10}},
        out_dir=tmp_path / "run",
        n_tokens=300,
    )
    entry = output.summary["analyses"]["share"]
    assert 0 < entry["metrics"]["mean_share"] < 2
    assert (output.run_dir / "share" / "share_histogram.parquet").is_file()
    assert (output.run_dir / "share" / "share.png").is_file()
