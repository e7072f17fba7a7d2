import sys

from ledserve.export.cli import main

sys.exit(main())
