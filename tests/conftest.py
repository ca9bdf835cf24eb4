import os
import sys
from pathlib import Path

# One torch thread: the tensors of the tiny model are small, and several threads on a shared 2-core machine
# spin against each other (20x slower seen here).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Without a GPU the Triton kernels run in Triton's interpreter. TRITON_INTERPRET is read when a kernel is
# decorated, so it must be set before any test module imports the kernels.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Headless defaults for pygame / SDL in every test process.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
