"""The checkpoint hub from a checkout: the same commands as ``python -m visionattn.hub``.

python tools/hub.py list [--family F] [--json]
python tools/hub.py fetch NAME[.TAG] [--cache-dir DIR] [--file PATH]
python tools/hub.py identify FILE
python tools/hub.py convert NAME[.TAG] FILE --out DIR [--model-kwargs KEY=VALUE ...]
python tools/hub.py check [NAME ...] [--family F]
python tools/hub.py readme [--check]
"""

from __future__ import annotations

import sys

from visionattn.hub import main

if __name__ == "__main__":
    sys.exit(main())
