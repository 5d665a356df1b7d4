"""python -m training.data prepare ...: the shard tool of training/data/cli.py."""

import sys

from training.data.cli import main

sys.exit(main())
