import sys

from wgdisco.cli import main

sys.exit(main())
