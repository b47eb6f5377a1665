import sys

from kdlab.cli import main

sys.exit(main())
