import os
import sys

# The example plugins (plugins/<name>/python/<name>.py) import as modules.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
for name in ("echo", "steps", "flaky", "hog", "webhook"):
    sys.path.insert(0, os.path.join(ROOT, "plugins", name, "python"))
