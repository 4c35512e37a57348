"""`python3 -m guest.stack.factored`: see `launcher`."""

import sys

from .launcher import main

sys.exit(main())
