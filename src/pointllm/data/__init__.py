"""pointllm.data"""
