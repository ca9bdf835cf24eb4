import os
import sys
from pathlib import Path

# One torch thread: the tensors of the tiny model are small, and several threads on a shared 2-core machine
# spin against each other (20x slower seen here).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Headless defaults for pygame / SDL in every test process.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
