import sys

from controllers.kctl.cli import main

sys.exit(main())
