"""pointllm.serve"""
