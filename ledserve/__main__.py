import sys

from ledserve.cli import main

sys.exit(main())
