"""`python -m serve_app.cli` = the `signalgen` command (for environments without the console script)."""
import sys

from serve_app.cli import main

sys.exit(main())
