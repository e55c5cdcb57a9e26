"""pointllm.eval"""
