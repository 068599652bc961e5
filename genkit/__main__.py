import sys

from genkit.cli import main

sys.exit(main())
