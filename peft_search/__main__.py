"""``python -m peft_search``: the ``peft-search`` command."""

import sys

from peft_search.search.cli import main

sys.exit(main())
