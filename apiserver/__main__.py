import sys

from apiserver.server import main

sys.exit(main())
