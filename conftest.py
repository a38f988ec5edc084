"""Every test and every notebook under nbval runs offline on the synthetic sample.

nbval's kernels inherit this process's environment, so setting it here pins the notebooks too.
Runs (checkpoints) go to a fresh temporary folder so each session trains from scratch.
"""

import os
import tempfile

os.environ["VITLIB_DATA"] = "sample"
os.environ.setdefault("VITLIB_RUNS_DIR", tempfile.mkdtemp(prefix="vitlib-runs-"))
for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
    os.environ.pop(name, None)
