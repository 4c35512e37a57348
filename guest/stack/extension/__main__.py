"""`python3 -m guest.stack.extension`: see `supervisor`."""

import sys

from .supervisor import main

sys.exit(main())
