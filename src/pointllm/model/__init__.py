"""pointllm.model"""
