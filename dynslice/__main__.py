import sys

from dynslice.cli import main

sys.exit(main())
