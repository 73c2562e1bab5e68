import sys

from gfmtune.cli import main

sys.exit(main())
