"""pointllm.serve: the OpenAI-compatible HTTP API and the web demo.

The defaults live here, in a module without heavy imports, so that the CLI can show them.
"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_MAX_REQUEST_MB = 32.0
API_KEY_ENV = "POINTLLM_API_KEY"
# Limits on what one request may ask for, and on the load the server accepts (docs/serving.md).
DEFAULT_MAX_STOP_CHARS = 64  # per stop string; transformers' stop-string tables grow with it
DEFAULT_MAX_TEXT_CHARS = 100_000  # all message text together, checked before tokenizing
DEFAULT_MAX_POINTS = 1_000_000  # points (and mesh faces) a point file may declare
DEFAULT_MAX_DECODE_MB = 64.0  # point-file bytes being decoded at once, over all requests
DEFAULT_MAX_QUEUE = 64  # requests waiting for the model; more get 429
DEFAULT_QUEUE_TIMEOUT_S = 300.0  # a request not started by then gets 503
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
