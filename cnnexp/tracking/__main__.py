import sys

from .follower import main

sys.exit(main())
