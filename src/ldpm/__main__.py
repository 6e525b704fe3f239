from ldpm.cli import main
import sys

sys.exit(main())
