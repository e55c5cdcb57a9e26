"""pointllm.serve: the OpenAI-compatible HTTP API and the web demo.

The defaults live here, in a module without heavy imports, so that the CLI can show them.
"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_MAX_REQUEST_MB = 32.0
API_KEY_ENV = "POINTLLM_API_KEY"
