"""Where things are, for tests in any folder of the suite."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent      # the project root
FIXTURES = ROOT / "tests" / "fixtures"
STATS_FIXTURES = FIXTURES / "stats"
