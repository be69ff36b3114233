import sys

from vito_fast.cli.main import main

sys.exit(main())
