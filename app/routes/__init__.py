"""Thin HTTP adapters: translate HTTP, call one function, map the result."""
