"""pointllm.train"""
