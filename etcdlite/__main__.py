import sys

from etcdlite.cli import main

sys.exit(main())
