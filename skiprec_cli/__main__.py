import sys

from skiprec_cli import main

sys.exit(main())
