import sys

from ledserve.benchmarks.run import main

sys.exit(main())
