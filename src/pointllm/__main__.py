import sys

from pointllm.cli import main

sys.exit(main())
