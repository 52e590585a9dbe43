"""``python -m monai_pipeline.cli``."""

import sys

from monai_pipeline.cli.app import main

sys.exit(main())
