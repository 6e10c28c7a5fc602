"""Write the bundled model's stepwise ONNX graph (and its client manifest) into cordsnet/weights/.

The wheel ships this graph so that the torch-free install (`pip install cordsnet`) can serve the browser
app (`cordsnet-cli web`) and run the Node/C clients with no export step. Run it after changing the
bundled weights, the exporter or the manifest format (tests/test_web.py checks the shipped graph against
the bundled model and the current manifest format):

    python tools/bundle_web_graph.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cordsnet._io import file_sha256  # noqa: E402
from cordsnet.checkpoint import default_checkpoint_path, load_checkpoint  # noqa: E402
from cordsnet.export import export  # noqa: E402
from cordsnet.weights import BUNDLED_STEPWISE  # noqa: E402


def main() -> None:
    source = default_checkpoint_path()
    out = ROOT / "cordsnet" / "weights" / BUNDLED_STEPWISE
    report = export(load_checkpoint(source), out, format="onnx", graph="stepwise", checkpoint_sha256=file_sha256(source))
    print(f"{out.relative_to(ROOT)}: {out.stat().st_size:,} bytes; verification: {report.verification.summary()}")


if __name__ == "__main__":
    main()
