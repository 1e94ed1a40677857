import sys

from skiprec.cli import main

sys.exit(main())
