"""pointllm.infer"""
