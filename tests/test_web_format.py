"""The web app's one formatting module (gateway/web/js/format.js), run by Node where it is installed:
money shown from integer fen and parsed back to fen exactly, weights from grams, times in CST."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

FORMAT_JS = Path(__file__).resolve().parent.parent / "gateway" / "web" / "js" / "format.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: format.js is checked by the browser test")

CASES = """
const out = {
  yuan: [0, 1, 99, 100, 2800, 123456789, -5, 900719925474099].map(yuan),
  parseYuan: ["28", "28.5", "28.05", "0.01", "1,000", "28.505", "-1", "1e3", " 7.10 ", ""].map(parseYuan),
  kg: [0, 1, 110250, 2200000].map(kg),
  parseKg: ["110", "110.25", "0.001", "110.2505", "abc"].map(parseKg),
  cst: [cst(0), cst(1765000000000)],
};
console.log(JSON.stringify(out));
"""


def test_money_weights_and_times_format_exactly() -> None:
    script = f"import {{ yuan, parseYuan, kg, parseKg, cst }} from {json.dumps(FORMAT_JS.as_uri())};\n{CASES}"
    done = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60,
                          check=True)
    out = json.loads(done.stdout)
    assert out["yuan"] == ["0.00", "0.01", "0.99", "1.00", "28.00", "1,234,567.89", "-0.05",
                           "9,007,199,254,740.99"]
    # Text that is not yuan with at most two decimals is refused (null), never rounded.
    assert out["parseYuan"] == [2800, 2850, 2805, 1, None, None, None, None, 710, None]
    assert out["kg"] == ["0.000", "0.001", "110.250", "2,200.000"]
    assert out["parseKg"] == [110_000, 110_250, 1, None, None]
    assert out["cst"] == ["—", "2025/12/06 13:46:40"]  # 05:46:40 UTC is 13:46:40 in China Standard Time
