"""A real `redis-server` for tests: the benchmarks' own (`bench.redis_server`), on a free loopback port."""

from bench.redis_server import redis_server

__all__ = ["redis_server"]
