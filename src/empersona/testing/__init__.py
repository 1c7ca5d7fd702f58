"""Offline stand-ins for tests, benchmarks and demos: tiny random Qwen2 models (``tiny``) and a
loopback OpenAI-compatible server with a scripted judge and fault injection (``loopback``)."""
