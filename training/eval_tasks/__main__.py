"""`python -m training.eval_tasks`: rebuild the local tasks' JSONL files (see the package docstring)."""

import sys

from training.eval_tasks import main

sys.exit(main())
