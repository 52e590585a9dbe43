"""``python -m monai_pipeline``: the ``monai-pipeline`` command."""

import sys

from monai_pipeline.cli import main

sys.exit(main())
