"""Print the pins of tools/constraints.txt: every installed distribution but this project, torch and
torchvision (pinned by tools/setup-tests.sh to the installed or on-disk release) and what torch brings for
CUDA (nvidia-*, triton, cuda-*: they follow torch). Used by tools/refresh-constraints.sh."""

from __future__ import annotations

import importlib.metadata as md
import re

SKIP = re.compile(r"^(cordsnet|torch|torchvision|triton|nvidia-.*|cuda-.*|pip|wheel)$")


def main() -> None:
    pins = {}
    for dist in md.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if not SKIP.match(name):
            pins[name] = dist.version
    print("# Pinned versions of everything tools/setup-tests.sh installs (the suite passed with these).")
    print("# Refresh: bash tools/refresh-constraints.sh. Newest releases instead: CORDSNET_LATEST=1.")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
