import sys
from pathlib import Path

# shared test helpers (feature_data.py, ...) import as plain modules
sys.path.insert(0, str(Path(__file__).parent))
