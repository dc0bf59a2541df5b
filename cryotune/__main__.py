import sys

from cryotune.cli import main

sys.exit(main())
