import sys

from benchmarks.plane_scale.bench import main

if __name__ == "__main__":
    sys.exit(main())
